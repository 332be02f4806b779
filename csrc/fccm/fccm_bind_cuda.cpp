// fccm CUDA launch bindings — to be implemented.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_fccm_cuda(py::module_& m) { (void)m; }
