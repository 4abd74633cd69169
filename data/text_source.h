// data/text_source.h: the bytes of a data file, whatever its compression: a name ending in ".gz" is
// gunzipped with zlib (concatenated gzip members included), anything else is read as is.
#pragma once
#include <filesystem>
#include <string>

namespace sft::data {

// The whole (decompressed) file. Throws sft::InputError naming the file when it cannot be opened, or
// when a .gz file is not gzip data, is truncated or is corrupt.
std::string read_text_source(const std::filesystem::path& path);

// The file name without a trailing ".gz": "train.json.gz" -> "train.json".
std::filesystem::path uncompressed_name(const std::filesystem::path& path);

}  // namespace sft::data
