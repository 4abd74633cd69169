# Python reference checks (pytest, against transformers/peft/tokenizers), registered with CTest so one
# `ctest` run reports everything. Each file is listed explicitly.
set(SFT_PYTHON_TESTS
  tests/python/test_real_model.py
  tests/python/test_eval_reference.py
  tests/python/test_generate_reference.py
  tests/python/test_export_reference.py
  tests/python/test_adapter_methods.py
  tests/python/test_repo_paths.py
  tests/python/test_dist_torchrun.py
  tests/python/test_tensorboard.py
  tests/python/test_plot_run.py
  tests/python/test_install.py
  tests/python/test_process_defaults.py
  tests/python/test_data_files.py
  tests/python/test_synth.py
  tests/python/test_synth_real.py
)
foreach(py_test ${SFT_PYTHON_TESTS})
  get_filename_component(py_name ${py_test} NAME_WE)
  add_test(NAME py.${py_name}
           COMMAND ${SFT_PYTHON} -m pytest -q -x ${CMAKE_SOURCE_DIR}/${py_test}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(py.${py_name} PROPERTIES TIMEOUT 1800
                       ENVIRONMENT "SFT_BINARY=$<TARGET_FILE:sft>;SFT_GOLDEN_DIR=${SFT_GOLDEN_DIR}")
endforeach()
