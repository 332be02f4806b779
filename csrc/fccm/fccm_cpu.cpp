// fccm CPU kernels — to be implemented.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_fccm_cpu(py::module_& m) { (void)m; }
