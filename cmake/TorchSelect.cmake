# Selects the LibTorch the engine links. Defines TORCH_LIBRARIES and TORCH_INCLUDE_DIRS (what common/, tests/,
# bench/ and tools/ use), plus SINKSCOPE_TORCH_VERSION, SINKSCOPE_TORCH_CUDA (CUDA version or empty) and
# SINKSCOPE_TORCH_SOURCE (a word for the configure summary).
#
#   (default)                               find_package(Torch): Debian's libtorch-dev, exactly as before.
#   -DTorch_DIR=/path/libtorch/share/cmake/Torch   an unpacked LibTorch archive: the same plain find_package(Torch).
#   -DSINKSCOPE_TORCH_PYTHON=/path/python3  the torch of that python (a pip wheel, e.g. 2.x+cu130), used WITHOUT its
#       TorchConfig.cmake: that file runs Caffe2's CUDA detection (CUDA toolkit, nvtx, cuDNN lookups), which fails
#       on nodes whose toolkit layout differs from the wheel's build machine, and the engine needs none of it (it
#       includes no CUDA header). Instead python says where torch/include and torch/lib are, its C++ ABI and CUDA
#       version, and an INTERFACE target links the shared libraries directly.
#
# Why --no-as-needed: nothing in our code references a symbol of libtorch_cuda.so / libc10_cuda.so (CUDA kernels
# are reached through the dispatcher, registered by those libraries' static initialisers). Toolchains that link with
# --as-needed by default (Ubuntu's) drop them, and at run time at::hasCUDA() is false. push-state/pop-state keeps the
# setting local to these libraries.

set(SINKSCOPE_TORCH_PYTHON "" CACHE FILEPATH
    "python3 whose torch (e.g. a pip CUDA wheel) the engine links, bypassing its TorchConfig.cmake; empty: find_package(Torch)")

if(NOT SINKSCOPE_TORCH_PYTHON)
  find_package(Torch REQUIRED)
  set(SINKSCOPE_TORCH_VERSION "${Torch_VERSION}")
  set(SINKSCOPE_TORCH_CUDA "")
  if(TORCH_CUDA_LIBRARIES OR CUDA_FOUND)
    set(SINKSCOPE_TORCH_CUDA "${CUDA_VERSION}")
  endif()
  if(Torch_DIR MATCHES "^/usr/")
    set(SINKSCOPE_TORCH_SOURCE "system LibTorch (${Torch_DIR})")
  else()
    set(SINKSCOPE_TORCH_SOURCE "LibTorch at ${Torch_DIR}")
  endif()
  message(STATUS "sinkscope: torch ${SINKSCOPE_TORCH_VERSION} from ${SINKSCOPE_TORCH_SOURCE}")
  return()
endif()

if(NOT EXISTS "${SINKSCOPE_TORCH_PYTHON}")
  message(FATAL_ERROR "SINKSCOPE_TORCH_PYTHON=${SINKSCOPE_TORCH_PYTHON} does not exist")
endif()
# One python process (importing a CUDA torch takes seconds). Prints key=value lines.
execute_process(
  COMMAND "${SINKSCOPE_TORCH_PYTHON}" -c [=[
import glob, os, torch
d = os.path.dirname(os.path.realpath(torch.__file__))
print("dir=" + d)
# Where a pip CUDA wheel keeps its CUDA libraries (site-packages/nvidia/*/lib): libtorch_cuda.so finds them through
# its own RUNPATH at run time; the linker needs them to check libtorch_cuda's symbols when linking an executable.
site = os.path.dirname(d)
libs = glob.glob(os.path.join(site, "nvidia", "**", "lib*.so*"), recursive=True)
print("nvlibs=" + ":".join(sorted({os.path.dirname(p) for p in libs})))
print("version=" + torch.__version__)
print("abi=" + str(int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))))
print("cuda=" + (torch.version.cuda or ""))
]=]
  RESULT_VARIABLE _tp_rc OUTPUT_VARIABLE _tp_out ERROR_VARIABLE _tp_err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _tp_rc EQUAL 0)
  message(FATAL_ERROR "SINKSCOPE_TORCH_PYTHON=${SINKSCOPE_TORCH_PYTHON}: 'import torch' failed:\n${_tp_err}")
endif()
string(REPLACE "\n" ";" _tp_lines "${_tp_out}")
foreach(_l IN LISTS _tp_lines)
  if(_l MATCHES "^(dir|version|abi|cuda|nvlibs)=(.*)$")
    set(_tp_${CMAKE_MATCH_1} "${CMAKE_MATCH_2}")
  endif()
endforeach()
if(NOT _tp_dir OR NOT DEFINED _tp_abi)
  message(FATAL_ERROR "SINKSCOPE_TORCH_PYTHON: unexpected answer from python:\n${_tp_out}\n${_tp_err}")
endif()

set(_tp_inc "${_tp_dir}/include")
set(_tp_lib "${_tp_dir}/lib")
if(NOT EXISTS "${_tp_inc}/ATen/ATen.h" OR NOT EXISTS "${_tp_inc}/torch/csrc/api/include/torch/version.h")
  message(FATAL_ERROR "torch ${_tp_version} at ${_tp_dir} has no C++ headers (${_tp_inc}/ATen/ATen.h); "
                      "a wheel built without them cannot be linked")
endif()
# The rest of the project (gRPC, protobuf, abseil from Debian; common/CMakeLists.txt) uses the C++11 std::string ABI,
# and the engine passes std::string across the torch boundary: a pre-C++11-ABI torch cannot work.
if(NOT _tp_abi STREQUAL "1")
  message(FATAL_ERROR "torch ${_tp_version} (${_tp_dir}) was built with _GLIBCXX_USE_CXX11_ABI=0; sinkscope and its "
                      "Debian dependencies use the C++11 ABI (=1). Use a cxx11-ABI build (pip wheels from 2.7 on are).")
endif()

set(_tp_libs)
foreach(_n torch torch_cpu c10)
  if(NOT EXISTS "${_tp_lib}/lib${_n}.so")
    message(FATAL_ERROR "torch at ${_tp_dir}: ${_tp_lib}/lib${_n}.so not found")
  endif()
  list(APPEND _tp_libs "${_tp_lib}/lib${_n}.so")
endforeach()
set(_tp_cuda_linked)  # the CUDA libraries found beside libtorch (empty: a CPU-only torch)
foreach(_n torch_cuda c10_cuda)
  if(EXISTS "${_tp_lib}/lib${_n}.so")
    list(APPEND _tp_libs "${_tp_lib}/lib${_n}.so")
    list(APPEND _tp_cuda_linked "lib${_n}")
  endif()
endforeach()
if(_tp_cuda AND NOT _tp_cuda_linked)
  message(WARNING "torch ${_tp_version} reports CUDA ${_tp_cuda} but ${_tp_lib} has no libtorch_cuda.so")
endif()

# ONE link item "-Wl,--push-state,--no-as-needed,<lib>,...,--pop-state": CMake reorders and de-duplicates separate
# items (a separate pop-state ended up dozens of libraries later), but never splits a flag.
if(_tp_lib MATCHES ",")
  message(FATAL_ERROR "torch lib dir ${_tp_lib} contains a comma, which cannot be passed through -Wl,")
endif()
string(REPLACE ";" "," _tp_libs_csv "${_tp_libs}")
if(NOT TARGET sinkscope::torch)
  add_library(sinkscope::torch INTERFACE IMPORTED GLOBAL)
  set_target_properties(sinkscope::torch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_tp_inc};${_tp_inc}/torch/csrc/api/include"
    INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=${_tp_abi}"
    INTERFACE_LINK_LIBRARIES "-Wl,--push-state,--no-as-needed,${_tp_libs_csv},--pop-state;Threads::Threads;${CMAKE_DL_LIBS}"
    # The libraries are flags to CMake, so it adds no rpath for them: run from the build tree and installed alike.
    INTERFACE_LINK_OPTIONS "LINKER:-rpath,${_tp_lib}")
  if(_tp_nvlibs)
    set_property(TARGET sinkscope::torch APPEND PROPERTY INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_tp_nvlibs}")
  endif()
endif()

set(TORCH_LIBRARIES sinkscope::torch)
set(TORCH_INCLUDE_DIRS "${_tp_inc};${_tp_inc}/torch/csrc/api/include")
set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=${_tp_abi}")
set(TORCH_FOUND TRUE)
set(SINKSCOPE_TORCH_VERSION "${_tp_version}")
set(SINKSCOPE_TORCH_CUDA "${_tp_cuda}")
if(NOT _tp_cuda_linked)
  set(SINKSCOPE_TORCH_CUDA "")
endif()
set(SINKSCOPE_TORCH_SOURCE "python torch at ${_tp_dir}")
if(_tp_cuda_linked)
  string(REPLACE ";" ", " _tp_what "${_tp_cuda_linked}")
  set(_tp_what "CUDA ${_tp_cuda}, linked: ${_tp_what}")
  if(NOT "libtorch_cuda" IN_LIST _tp_cuda_linked)
    # Debian's python3-torch-cuda has no torch/lib/libtorch_cuda.so; its libtorch.so NEEDs libtorch_cuda.so.2.6,
    # so the CUDA kernels are still loaded at start (gpu-check.sh checks the loaded libraries with ldd).
    string(APPEND _tp_what "; libtorch_cuda through libtorch.so")
  endif()
else()
  set(_tp_what "CPU only")
endif()
message(STATUS "sinkscope: torch ${_tp_version} (${_tp_what}) from ${_tp_dir} via ${SINKSCOPE_TORCH_PYTHON}")
