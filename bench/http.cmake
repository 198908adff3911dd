# bench_http: lorad-http against liblorad directly on the same requests.
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)
add_executable(bench_http ${CMAKE_CURRENT_LIST_DIR}/bench_http.c)
target_link_libraries(bench_http PRIVATE lorad_client PkgConfig::CURL PkgConfig::JSONC)
target_compile_definitions(bench_http PRIVATE
  LORAD_BIN="$<TARGET_FILE:lorad>" LORAD_HTTP_BIN="$<TARGET_FILE:lorad-http>"
  DEMO_DIR="${PROJECT_SOURCE_DIR}/demo")
add_dependencies(bench_http lorad lorad-http)
