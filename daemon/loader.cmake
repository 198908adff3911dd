# The adapter store's disk→host path: the host tier (NUMA-local, locked
# buffers with a byte budget and LRU) and the io_uring loader thread that
# fills it, checking each file's SHA-256 and safetensors header.
if(NOT TARGET PkgConfig::OPENSSL)
  pkg_check_modules(OPENSSL REQUIRED IMPORTED_TARGET libcrypto)
endif()
add_library(lorad_loader STATIC
  ${CMAKE_CURRENT_LIST_DIR}/hostpool.c
  ${CMAKE_CURRENT_LIST_DIR}/loader.c)
target_include_directories(lorad_loader PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(lorad_loader PUBLIC lorad_engine PkgConfig::URING PkgConfig::NUMA
  PkgConfig::OPENSSL Threads::Threads)
