# bench_cuda: the CUDA backend through the forward layer on a TinyLlama-shaped
# bf16 model with 32 rank-16 q/v adapters: decode tokens/s against the bytes
# bound (HBM measured in the same run) and against base, LoRA against GEMM
# time per layer, adapter uploads on the copy queue against a bare upload.
# It uses only backend.h, so it builds without CUDA and then prints a
# "skipped" row.
add_executable(bench_cuda ${CMAKE_CURRENT_LIST_DIR}/bench_cuda.c)
target_link_libraries(bench_cuda PRIVATE lorad_engine Threads::Threads m)
target_compile_definitions(bench_cuda PRIVATE MKMODEL="$<TARGET_FILE:lorad-mkmodel>")
add_dependencies(bench_cuda lorad-mkmodel)

# bench_results: result rows through CUDA IPC against the same bytes copied
# through the host, with the real daemon; it reads device memory with the
# CUDA runtime, so it builds only with the toolkit.
if(LORAD_HAVE_CUDA)
  find_package(CUDAToolkit REQUIRED)
  add_executable(bench_results ${CMAKE_CURRENT_LIST_DIR}/bench_results.c)
  target_link_libraries(bench_results PRIVATE lorad_client CUDA::cudart_static)
  target_compile_definitions(bench_results PRIVATE
    LORAD_BIN="$<TARGET_FILE:lorad>" MKMODEL="$<TARGET_FILE:lorad-mkmodel>")
  add_dependencies(bench_results lorad lorad-mkmodel)
endif()
