# synth/: `sft synth` (issue 15): Self-Instruct, Evol-Instruct, distillation and backtranslation.
# Included from the top CMakeLists.txt after sftcore is defined; the sources join it.
target_sources(sftcore PRIVATE
  synth/rouge.cpp
  synth/filters.cpp
  synth/parse.cpp
  synth/prompts.cpp
  synth/completer.cpp
  synth/decode.cpp
  synth/chat_model.cpp
  synth/run_output.cpp
  synth/self_instruct.cpp
  synth/evol.cpp
  synth/label.cpp
  synth/command.cpp
)
