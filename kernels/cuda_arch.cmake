# kernels/cuda_arch.cmake: sft_torch_cuda_arch_list(), the mapping from our CMake-style CUDA architecture
# list (SFT_CUDA_ARCHITECTURES, e.g. "80;90", "86", "90a", "100", "120-real") to LibTorch's
# TORCH_CUDA_ARCH_LIST syntax ("8.0 9.0", "8.6", "9.0a", "10.0", "12.0"), which drives the flags torch's
# own CMake config adds. Tested by kernels/cuda_arch_test.cmake (CTest: cmake.cuda_arch_list).
#
#   sft_torch_cuda_arch_list(OUT_VAR "80;90")  ->  OUT_VAR = "8.0 9.0", OUT_VAR_ERROR = ""
# An entry is <sm>[a|f][-real|-virtual]: sm's last digit is the minor version, the rest the major one.
# -virtual (PTX only) becomes "+PTX"; -real is plain SASS. Anything else (native, all, all-major, a typo)
# sets OUT_VAR_ERROR to a message naming the entry and leaves OUT_VAR empty.
function(sft_torch_cuda_arch_list out_var archs)
  set(result "")
  set(error "")
  foreach(entry IN LISTS archs)
    if(entry MATCHES "^([1-9][0-9]*)([0-9])([af]?)(-real|-virtual)?$")
      set(item "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
      if(CMAKE_MATCH_4 STREQUAL "-virtual")
        string(APPEND item "+PTX")
      endif()
      list(APPEND result "${item}")
    else()
      set(error "SFT_CUDA_ARCHITECTURES entry '${entry}' is not <sm>[a|f][-real|-virtual] (e.g. 80, 86, 90a, 120)")
      set(result "")
      break()
    endif()
  endforeach()
  if(NOT error AND NOT result)
    set(error "SFT_CUDA_ARCHITECTURES is empty")
  endif()
  string(REPLACE ";" " " result "${result}")
  set(${out_var} "${result}" PARENT_SCOPE)
  set(${out_var}_ERROR "${error}" PARENT_SCOPE)
endfunction()
