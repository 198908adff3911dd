# bench_stream: the loader's disk→host streaming against fio, pread and
# mmap+copy on the same files (generated in --dir, a real disk), and a cold
# adapter from request to resident through the registry's path against fio.
add_executable(bench_stream ${CMAKE_CURRENT_LIST_DIR}/bench_stream.c)
target_link_libraries(bench_stream PRIVATE lorad_routes PkgConfig::JSONC)
target_compile_definitions(bench_stream PRIVATE MKMODEL="$<TARGET_FILE:lorad-mkmodel>")
add_dependencies(bench_stream lorad-mkmodel)
