# bench_stream: the loader's disk→host streaming against fio, pread and
# mmap+copy on the same files (generated in --dir, a real disk).
add_executable(bench_stream ${CMAKE_CURRENT_LIST_DIR}/bench_stream.c)
target_link_libraries(bench_stream PRIVATE lorad_store PkgConfig::JSONC)
