// data/text_source.cpp: plain and gzip-compressed data files (zlib's gz* reader).
#include "data/text_source.h"

#include <zlib.h>

#include <fstream>
#include <iterator>
#include <memory>

#include "common/errors.h"

namespace sft::data {
namespace {

bool has_gz_suffix(const std::filesystem::path& path) { return path.extension() == ".gz"; }

std::string read_plain(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open data file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError(path.string() + ": read error");
  return text;
}

std::string read_gzip(const std::filesystem::path& path) {
  const std::string label = path.string();
  {
    // gzread passes non-gzip bytes through unchanged; a .gz name that holds something else is an error.
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw InputError(label + ": cannot open data file");
    char magic[2] = {};
    probe.read(magic, 2);
    if (probe.gcount() != 2 || static_cast<unsigned char>(magic[0]) != 0x1F || static_cast<unsigned char>(magic[1]) != 0x8B) {
      throw InputError(label + ": not gzip data (the name ends in .gz but the file lacks the gzip header)");
    }
  }
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  if (!file) throw InputError(label + ": cannot open data file");
  gzbuffer(file.get(), 1 << 17);
  std::string text;
  char chunk[1 << 16];
  for (;;) {
    const int n = gzread(file.get(), chunk, sizeof(chunk));
    if (n > 0) {
      text.append(chunk, static_cast<size_t>(n));
      continue;
    }
    int code = Z_OK;
    const char* message = gzerror(file.get(), &code);
    if (n == 0 && code == Z_OK) break;
    // zlib reports a stream that ends early as Z_BUF_ERROR ("unexpected end of file") and then reads 0.
    if (code == Z_BUF_ERROR) {
      throw InputError(label + ": truncated gzip data (the compressed stream ends early, after " +
                       std::to_string(text.size()) + " decompressed bytes)");
    }
    throw InputError(label + ": corrupt gzip data: " + (message ? message : "unknown zlib error"));
  }
  return text;
}

}  // namespace

std::string read_text_source(const std::filesystem::path& path) {
  return has_gz_suffix(path) ? read_gzip(path) : read_plain(path);
}

std::filesystem::path uncompressed_name(const std::filesystem::path& path) {
  return has_gz_suffix(path) ? path.parent_path() / path.stem() : path;
}

}  // namespace sft::data
