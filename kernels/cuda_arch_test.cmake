# kernels/cuda_arch_test.cmake: cmake -P test of sft_torch_cuda_arch_list (kernels/cuda_arch.cmake), run by
# CTest as cmake.cuda_arch_list. Every architecture family we may be built for, plus rejected entries.
include(${CMAKE_CURRENT_LIST_DIR}/cuda_arch.cmake)
set(failures 0)
function(expect archs want_list want_error)
  sft_torch_cuda_arch_list(got "${archs}")
  if(NOT got STREQUAL want_list)
    message(SEND_ERROR "'${archs}' -> '${got}', expected '${want_list}'")
  endif()
  if(want_error AND NOT got_ERROR)
    message(SEND_ERROR "'${archs}' was accepted, expected an error")
  elseif(NOT want_error AND got_ERROR)
    message(SEND_ERROR "'${archs}' was rejected: ${got_ERROR}")
  endif()
endfunction()
expect("80;90" "8.0 9.0" FALSE)
expect("86" "8.6" FALSE)              # the old string(REPLACE "0" ".0") mapping gave "86"
expect("100" "10.0" FALSE)            # ... and "1.0.0"
expect("120" "12.0" FALSE)            # ... and "12.0" only by luck
expect("75;80;86;89;90;100;103;110;120;121" "7.5 8.0 8.6 8.9 9.0 10.0 10.3 11.0 12.0 12.1" FALSE)
expect("90a" "9.0a" FALSE)
expect("100a;120f" "10.0a 12.0f" FALSE)
expect("80-real;90-virtual" "8.0 9.0+PTX" FALSE)
expect("native" "" TRUE)
expect("all-major" "" TRUE)
expect("8.6" "" TRUE)
expect("80;sm_90" "" TRUE)
expect("" "" TRUE)
