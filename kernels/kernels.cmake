# The compute backends. lorad_kernels is what the engine links; only files
# under kernels/ know which hardware runs.
add_library(lorad_kernels STATIC
  ${CMAKE_CURRENT_LIST_DIR}/cpu/cpu.c
  ${CMAKE_CURRENT_LIST_DIR}/cpu/gemm.c
  ${CMAKE_CURRENT_LIST_DIR}/cpu/pool.c
  ${CMAKE_CURRENT_LIST_DIR}/dtype.c
  ${CMAKE_CURRENT_LIST_DIR}/sample_ref.c)
target_include_directories(lorad_kernels PUBLIC ${CMAKE_CURRENT_LIST_DIR})
# -O3 for the loop vectoriser; -fopenmp-simd honours the `omp simd`
# reductions without pulling in an OpenMP runtime.
target_compile_options(lorad_kernels PRIVATE -O3 -fopenmp-simd)
# No BLAS: the CPU backend has its own GEMM. (OpenBLAS would start its
# thread pool before main(), with no signal blocked in it.)
target_link_libraries(lorad_kernels PUBLIC Threads::Threads mvec m)

if(LORAD_HAVE_CUDA)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  add_library(lorad_cuda STATIC ${CMAKE_CURRENT_LIST_DIR}/cuda/cuda.cu)
  # Ampere and Hopper at least; the runtime links statically, cuBLAS is a
  # shared library of the toolkit.
  set_target_properties(lorad_cuda PROPERTIES
    CUDA_ARCHITECTURES "80;90"
    POSITION_INDEPENDENT_CODE ON
    CUDA_STANDARD 17)
  target_compile_options(lorad_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-format-truncation -Werror=all-warnings>)
  target_include_directories(lorad_cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(lorad_cuda PUBLIC CUDA::cudart_static CUDA::cublas Threads::Threads stdc++)
  target_link_libraries(lorad_kernels PUBLIC lorad_cuda)
else()
  target_sources(lorad_kernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/cuda_none.c)
endif()
