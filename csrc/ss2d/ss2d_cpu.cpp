// ss2d CPU kernels — to be implemented.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_ss2d_cpu(py::module_& m) { (void)m; }
