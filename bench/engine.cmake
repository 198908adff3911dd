# bench_engine: prefill and decode speed of the engine against bare
# OpenBLAS over the same shapes. It makes its model with lorad-mkmodel.
add_executable(bench_engine ${CMAKE_CURRENT_LIST_DIR}/bench_engine.c)
target_link_libraries(bench_engine PRIVATE lorad_engine)
target_compile_definitions(bench_engine PRIVATE MKMODEL="$<TARGET_FILE:lorad-mkmodel>")
add_dependencies(bench_engine lorad-mkmodel)
