# The inference engine: model files, the forward pass over the backend
# interface, the paged KV cache, sampling; and its two offline tools.
add_library(lorad_engine STATIC
  ${CMAKE_CURRENT_LIST_DIR}/errmsg.c
  ${CMAKE_CURRENT_LIST_DIR}/safetensors.c
  ${CMAKE_CURRENT_LIST_DIR}/model.c
  ${CMAKE_CURRENT_LIST_DIR}/adapter.c
  ${CMAKE_CURRENT_LIST_DIR}/forward.c
  ${CMAKE_CURRENT_LIST_DIR}/kvcache.c
  ${CMAKE_CURRENT_LIST_DIR}/sample.c
  ${CMAKE_CURRENT_LIST_DIR}/engine.c)
target_include_directories(lorad_engine PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_options(lorad_engine PRIVATE -O3)
target_link_libraries(lorad_engine PUBLIC lorad_kernels PkgConfig::JSONC m
  PRIVATE PkgConfig::PCRE2)

add_executable(lorad-run ${CMAKE_CURRENT_LIST_DIR}/lorad-run.c)
target_link_libraries(lorad-run PRIVATE lorad_engine lorad_tokenizer)
add_executable(lorad-mkmodel ${CMAKE_CURRENT_LIST_DIR}/lorad-mkmodel.c)
target_link_libraries(lorad-mkmodel PRIVATE lorad_engine)
install(TARGETS lorad-run lorad-mkmodel RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
