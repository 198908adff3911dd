# bench_engine: prefill and decode speed of the engine against bare
# OpenBLAS over the same shapes. It makes its model with lorad-mkmodel.
add_executable(bench_engine ${CMAKE_CURRENT_LIST_DIR}/bench_engine.c)
# OpenBLAS: the baseline the CPU backend's own GEMM is measured against
target_link_libraries(bench_engine PRIVATE lorad_engine PkgConfig::OPENBLAS)
target_compile_definitions(bench_engine PRIVATE MKMODEL="$<TARGET_FILE:lorad-mkmodel>")
add_dependencies(bench_engine lorad-mkmodel)

# bench_lora: decode speed with LoRA adapters (base only, 1, 4, 16 distinct
# adapters; two recipes) against the base model, prompts on one adapter,
# and resident memory.
add_executable(bench_lora ${CMAKE_CURRENT_LIST_DIR}/bench_lora.c)
target_link_libraries(bench_lora PRIVATE lorad_engine)
target_compile_definitions(bench_lora PRIVATE MKMODEL="$<TARGET_FILE:lorad-mkmodel>")
add_dependencies(bench_lora lorad-mkmodel)
