// A small JSON reader and writer for the native HTTP front's infer headers.
//
// Why hand-written: the front only reads the few-hundred-byte JSON header of a binary
// infer request and writes the header of its answer; a library (and its build dependency)
// for that would be most of the module. It is deliberately strict: whatever it does not
// read exactly as Python's json module would (odd numbers, duplicate keys, invalid UTF-8,
// lone surrogates, deep nesting) makes Parse fail, and the request goes to the Python
// frontend, which answers it with Triton's wording.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace json_lite {

struct Value {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = kNull;
  bool boolean = false;
  bool integral = false;  // a number written as an integer that fits int64
  int64_t integer = 0;
  std::string text;  // a string, decoded to UTF-8
  std::vector<Value> items;
  std::vector<std::pair<std::string, Value>> members;

  const Value* Get(const std::string& key) const {
    for (const auto& [k, v] : members) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  bool Is(Kind k) const { return kind == k; }
};

namespace detail {

constexpr int kMaxDepth = 16;

inline void PutUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// One UTF-8 sequence at p (strict: no overlongs, surrogates or values past U+10FFFF).
inline bool NextUtf8(const unsigned char*& p, const unsigned char* end, uint32_t* cp) {
  unsigned char c = *p;
  int extra;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    p++;
    return true;
  } else if ((c & 0xE0) == 0xC0) {
    extra = 1, v = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    extra = 2, v = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    extra = 3, v = c & 0x07, min = 0x10000;
  } else {
    return false;
  }
  if (end - p <= extra) return false;
  for (int i = 1; i <= extra; i++) {
    if ((p[i] & 0xC0) != 0x80) return false;
    v = (v << 6) | (p[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return false;
  *cp = v;
  p += extra + 1;
  return true;
}

class Parser {
 public:
  Parser(const char* data, size_t len)
      : p_(reinterpret_cast<const unsigned char*>(data)),
        end_(reinterpret_cast<const unsigned char*>(data) + len) {}

  bool Document(Value* out) {
    if (!Parse(out, 0)) return false;
    Space();
    return p_ == end_;
  }

 private:
  void Space() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) p_++;
  }
  bool Literal(const char* word) {
    for (const char* w = word; *w; w++, p_++) {
      if (p_ == end_ || *p_ != static_cast<unsigned char>(*w)) return false;
    }
    return true;
  }
  bool Hex4(uint32_t* v) {
    if (end_ - p_ < 4) return false;
    *v = 0;
    for (int i = 0; i < 4; i++) {
      unsigned char c = *p_++;
      int d = (c >= '0' && c <= '9') ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      *v = (*v << 4) | static_cast<uint32_t>(d);
    }
    return true;
  }
  bool String(std::string* out) {
    p_++;  // the opening quote
    while (p_ < end_) {
      unsigned char c = *p_;
      if (c == '"') {
        p_++;
        return true;
      }
      if (c < 0x20) return false;  // NOTE: json.loads refuses raw control characters too
      if (c != '\\') {
        uint32_t cp;
        if (!NextUtf8(p_, end_, &cp)) return false;
        PutUtf8(cp, out);
        continue;
      }
      if (++p_ == end_) return false;
      unsigned char e = *p_++;
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return false;  // a lone low surrogate
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low;
            if (end_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') return false;
            p_ += 2;
            if (!Hex4(&low) || low < 0xDC00 || low > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          PutUtf8(cp, out);
          break;
        }
        default:
          return false;
      }
    }
    return false;
  }
  bool Number(Value* out) {
    const unsigned char* start = p_;
    bool negative = *p_ == '-';
    if (negative) p_++;
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
    if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9') return false;
    uint64_t magnitude = 0;
    bool fits = true;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      uint64_t d = *p_++ - '0';
      if (magnitude > (UINT64_MAX - d) / 10) fits = false;
      magnitude = magnitude * 10 + d;
    }
    bool fraction = p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E');
    if (fraction) {  // NOTE: a valid JSON number Python reads as a float: never integral
      if (*p_ == '.') {
        p_++;
        if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
        while (p_ < end_ && *p_ >= '0' && *p_ <= '9') p_++;
      }
      if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
        p_++;
        if (p_ < end_ && (*p_ == '+' || *p_ == '-')) p_++;
        if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
        while (p_ < end_ && *p_ >= '0' && *p_ <= '9') p_++;
      }
    }
    out->kind = Value::kNumber;
    uint64_t limit = negative ? (uint64_t(1) << 63) : (uint64_t(1) << 63) - 1;
    out->integral = !fraction && fits && magnitude <= limit;
    if (out->integral) {
      out->integer = negative ? static_cast<int64_t>(0 - magnitude)
                              : static_cast<int64_t>(magnitude);
    }
    return p_ > start;
  }
  bool Parse(Value* out, int depth) {
    if (depth > kMaxDepth) return false;
    Space();
    if (p_ == end_) return false;
    switch (*p_) {
      case '{': {
        p_++;
        out->kind = Value::kObject;
        Space();
        if (p_ < end_ && *p_ == '}') {
          p_++;
          return true;
        }
        while (true) {
          Space();
          if (p_ == end_ || *p_ != '"') return false;
          std::string key;
          if (!String(&key) || out->Get(key) != nullptr) return false;  // duplicates: Python's
          Space();
          if (p_ == end_ || *p_++ != ':') return false;
          Value v;
          if (!Parse(&v, depth + 1)) return false;
          out->members.emplace_back(std::move(key), std::move(v));
          Space();
          if (p_ == end_) return false;
          if (*p_ == ',') {
            p_++;
            continue;
          }
          return *p_++ == '}';
        }
      }
      case '[': {
        p_++;
        out->kind = Value::kArray;
        Space();
        if (p_ < end_ && *p_ == ']') {
          p_++;
          return true;
        }
        while (true) {
          Value v;
          if (!Parse(&v, depth + 1)) return false;
          out->items.push_back(std::move(v));
          Space();
          if (p_ == end_) return false;
          if (*p_ == ',') {
            p_++;
            continue;
          }
          return *p_++ == ']';
        }
      }
      case '"':
        out->kind = Value::kString;
        return String(&out->text);
      case 't':
        out->kind = Value::kBool, out->boolean = true;
        return Literal("true");
      case 'f':
        out->kind = Value::kBool, out->boolean = false;
        return Literal("false");
      case 'n':
        out->kind = Value::kNull;
        return Literal("null");
      default:
        return Number(out);
    }
  }

  const unsigned char* p_;
  const unsigned char* end_;
};

}  // namespace detail

// JSON text -> value; false for anything this reader does not take (see the top).
inline bool Parse(const char* data, size_t len, Value* out) {
  return detail::Parser(data, len).Document(out);
}

// A UTF-8 string as Python's json.dumps writes it (ensure_ascii): the same bytes the
// Python frontend would send. False when `s` is not valid UTF-8.
inline bool Quote(const std::string& s, std::string* out) {
  out->push_back('"');
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  char buf[16];
  while (p < end) {
    uint32_t cp;
    if (!detail::NextUtf8(p, end, &cp)) return false;
    switch (cp) {
      case '"': *out += "\\\""; continue;
      case '\\': *out += "\\\\"; continue;
      case '\n': *out += "\\n"; continue;
      case '\r': *out += "\\r"; continue;
      case '\t': *out += "\\t"; continue;
      case '\b': *out += "\\b"; continue;
      case '\f': *out += "\\f"; continue;
      default: break;
    }
    if (cp >= 0x20 && cp <= 0x7E) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x10000) {
      std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      *out += buf;
    } else {
      uint32_t v = cp - 0x10000;
      std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      *out += buf;
    }
  }
  out->push_back('"');
  return true;
}

}  // namespace json_lite
