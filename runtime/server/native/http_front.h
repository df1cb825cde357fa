// The native HTTP front: KServe v2 HTTP/REST on --http-port, in C++ threads.
//
// Why: through aiohttp every HTTP infer request cost the Python event loop ~300 us more than
// a native-lane gRPC call, and at concurrency 8 Triton's own HTTP frontend served 1.8x more
// requests per second on the same 2 cores (benchmarks/vs_triton.py --http). Here a binary
// infer request (Triton's binary tensor extension, every output asked for as binary) for a
// model with a native lane is parsed, checked and queued by the connection's thread, and
// answered from the lane's batch as the gRPC lane answers: Python runs once per batch.
//
// Everything else is forwarded byte for byte to the aiohttp application (the Python
// frontend, listening on a private Unix socket), which stays the one place that knows the
// routes, wording and statuses: health, metadata, config, JSON-data infers, shared memory,
// repository, errors, and any infer the lane does not take exactly as the Python path would
// (the same rule as the gRPC lane: when in doubt, Python answers). A connection this front
// does not understand (chunked or HTTP/1.0 requests, odd headers, a body over the size
// limit) is tunnelled to aiohttp whole, for the rest of its life.
//
// One thread per connection, blocking sockets: a slow client stalls only its own thread;
// Shutdown() wakes every thread (eventfd for polls, shutdown(2) for blocked sends).
// Included by grpc_bridge.cc after the Lane: it uses ParsedRequest, Pending and Bridge.
#pragma once

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <system_error>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

namespace http_front {

constexpr size_t kMaxHead = 64 * 1024;     // a request head past this goes to aiohttp whole
// NOTE: below aiohttp's limits (8190-byte lines, 128 headers): a head near them is aiohttp's
// to judge, so the two never read one byte stream differently
constexpr size_t kMaxLine = 8000;
constexpr size_t kMaxHeaders = 100;
constexpr int kIdleMs = 75 * 1000;          // aiohttp's keep-alive timeout
constexpr int kHeadMs = 60 * 1000;          // a request's head, from its first byte
constexpr int kMaxConnections = 4096;
constexpr size_t kRelayChunk = 256 * 1024;
constexpr size_t kReserveCap = 64 << 20;    // capacity reserved for a body up front, at most
constexpr int kUpstreamIdleS = 30;          // reuse an aiohttp connection idle this long, no more

struct Head {
  std::string method, target;
  int status = 0;  // responses
  size_t size = 0;  // bytes up to and including the blank line
  bool has_length = false;
  uint64_t length = 0;
  bool expect_continue = false;
  bool close = false;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased

  const std::string* Header(const std::string& lower) const {
    for (const auto& [k, v] : headers) {
      if (k == lower) return &v;
    }
    return nullptr;
  }
};

enum HeadResult { kIncomplete, kParsed, kOdd };

inline std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

inline std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

// RFC 9110 token characters: a header name with any other byte is the Python side's to refuse.
inline bool Token(const std::string& s) {
  static const std::string kSymbols = "!#$%&'*+-.^_`|~";
  for (unsigned char c : s) {
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!alnum && kSymbols.find(static_cast<char>(c)) == std::string::npos) return false;
  }
  return !s.empty();
}

// An HTTP/1.1 request (or, `response`, a response) head at the start of `buf`. kOdd: not
// the plain framing this front relays (chunked, HTTP/1.0, folded or repeated lengths...).
inline HeadResult ParseHead(const std::string& buf, bool response, Head* h) {
  size_t end = buf.find("\r\n\r\n");
  // NOTE: a bare LF would never end the head here; aiohttp's parser is the one to refuse it
  size_t scan = end == std::string::npos ? buf.size() : end + 4;
  for (size_t i = buf.find('\n'); i < scan; i = buf.find('\n', i + 1)) {
    if (i == 0 || buf[i - 1] != '\r') return kOdd;
  }
  if (end == std::string::npos) return kIncomplete;
  *h = Head();
  h->size = end + 4;
  size_t line_end = buf.find("\r\n");
  std::string first = buf.substr(0, line_end);
  size_t a = first.find(' ');
  if (a == std::string::npos) return kOdd;
  if (response) {
    // NOTE: aiohttp answers its parser's errors in HTTP/1.0, then closes
    bool one_zero = first.compare(0, a, "HTTP/1.0") == 0;
    if ((!one_zero && first.compare(0, a, "HTTP/1.1") != 0) || first.size() < a + 4) return kOdd;
    h->close = one_zero;
    h->status = std::atoi(first.c_str() + a + 1);
    if (h->status < 100 || h->status > 599) return kOdd;
  } else {
    size_t b = first.find(' ', a + 1);
    if (b == std::string::npos || first.compare(b + 1, std::string::npos, "HTTP/1.1") != 0) {
      return kOdd;
    }
    h->method = first.substr(0, a);
    h->target = first.substr(a + 1, b - a - 1);
    // NOTE: CONNECT (llhttp ignores its body) or any method it might treat specially
    static const std::set<std::string> kMethods = {"GET", "HEAD", "POST", "PUT", "DELETE",
                                                   "OPTIONS", "PATCH"};
    if (!kMethods.count(h->method) || first.size() > kMaxLine) return kOdd;
    if (h->target.empty() || h->target[0] != '/') return kOdd;
  }
  size_t at = line_end + 2;
  while (at < end + 2) {
    size_t next = buf.find("\r\n", at);
    std::string line = buf.substr(at, next - at);
    at = next + 2;
    if (!response && (line.size() > kMaxLine || h->headers.size() >= kMaxHeaders)) return kOdd;
    size_t colon = line.find(':');
    if (colon == std::string::npos || colon == 0 || line[0] == ' ' || line[0] == '\t') {
      return kOdd;
    }
    std::string name = Lower(line.substr(0, colon));
    if (!Token(name)) return kOdd;
    std::string value = Trim(line.substr(colon + 1));
    for (unsigned char c : value) {
      if ((c < 0x20 && c != '\t') || c == 0x7F) return kOdd;
    }
    if (name == "content-length") {
      if (h->has_length || value.empty() || value.size() > 18 ||
          value.find_first_not_of("0123456789") != std::string::npos) {
        return kOdd;
      }
      h->has_length = true;
      h->length = std::stoull(value);
    } else if (name == "transfer-encoding" || name == "upgrade") {
      return kOdd;
    } else if (name == "expect") {
      if (response || Lower(value) != "100-continue") return kOdd;
      h->expect_continue = true;
    } else if (name == "connection") {
      std::string v = Lower(value);
      if (v.find("close") != std::string::npos) h->close = true;
      if (v.find("upgrade") != std::string::npos) return kOdd;
    }
    h->headers.emplace_back(std::move(name), std::move(value));
  }
  return kParsed;
}

// /v2/models/<model>[/versions/<version>]/infer with plain characters: the lane's route.
inline bool InferTarget(const std::string& target, std::string* model, std::string* version) {
  static const std::string kPrefix = "/v2/models/", kSuffix = "/infer";
  if (target.compare(0, kPrefix.size(), kPrefix) != 0 || target.size() <= kPrefix.size() +
      kSuffix.size() || target.compare(target.size() - kSuffix.size(), kSuffix.size(), kSuffix)) {
    return false;
  }
  // NOTE: percent-escapes, queries and odd bytes are aiohttp's to decode
  if (target.find_first_of("%?#;\\") != std::string::npos) return false;
  std::string middle =
      target.substr(kPrefix.size(), target.size() - kPrefix.size() - kSuffix.size());
  size_t slash = middle.find('/');
  if (slash == std::string::npos) {
    *model = middle;
    version->clear();
  } else {
    static const std::string kVersions = "/versions/";
    if (middle.compare(slash, kVersions.size(), kVersions) != 0) return false;
    *model = middle.substr(0, slash);
    *version = middle.substr(slash + kVersions.size());
    if (version->empty() || version->find('/') != std::string::npos) return false;
  }
  if (model->empty()) return false;
  for (unsigned char c : *model + *version) {
    if (c <= 0x20 || c >= 0x7F) return false;
  }
  return true;
}

inline bool OnlyKeys(const json_lite::Value& object, std::initializer_list<const char*> keys) {
  for (const auto& [k, v] : object.members) {
    bool known = false;
    for (const char* key : keys) known = known || k == key;
    if (!known) return false;
  }
  return true;
}

// An HTTP binary infer request (its body from `start` in `message`) -> the lane's
// ParsedRequest, raw inputs as offsets into `message`, when it is exactly the simple request
// the lane serves; false sends it to aiohttp.
inline bool ParseInfer(const std::string& message, size_t start, const std::string* header_length,
                       const std::string& model, const std::string& version, ParsedRequest* r) {
  using json_lite::Value;
  if (header_length == nullptr || header_length->empty() || header_length->size() > 18 ||
      header_length->find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  size_t json_size = std::stoull(*header_length);
  if (json_size > message.size() - start) return false;
  Value top;
  if (!json_lite::Parse(message.data() + start, json_size, &top) || !top.Is(Value::kObject)) {
    return false;
  }
  if (!OnlyKeys(top, {"id", "inputs", "outputs", "parameters"})) return false;
  r->model = model;
  r->version = version;
  if (const Value* id = top.Get("id")) {
    if (!id->Is(Value::kString)) return false;
    r->id = id->text;
  }
  bool binary_output = false;
  if (const Value* params = top.Get("parameters")) {
    if (!params->Is(Value::kObject) || !OnlyKeys(*params, {"binary_data_output"})) return false;
    if (const Value* flag = params->Get("binary_data_output")) {
      if (!flag->Is(Value::kBool)) return false;
      binary_output = flag->boolean;
    }
  }
  const Value* inputs = top.Get("inputs");
  if (inputs == nullptr || !inputs->Is(Value::kArray) || inputs->items.size() > kMaxTensors) {
    return false;
  }
  size_t offset = start + json_size;
  for (const Value& item : inputs->items) {
    if (!item.Is(Value::kObject) || !OnlyKeys(item, {"name", "datatype", "shape", "parameters"})) {
      return false;
    }
    const Value* name = item.Get("name");
    const Value* datatype = item.Get("datatype");
    const Value* shape = item.Get("shape");
    const Value* params = item.Get("parameters");
    if (!name || !datatype || !shape || !params || !name->Is(Value::kString) ||
        !datatype->Is(Value::kString) || !shape->Is(Value::kArray) ||
        shape->items.size() > kMaxDims || !params->Is(Value::kObject) ||
        !OnlyKeys(*params, {"binary_data_size"})) {
      return false;
    }
    const Value* size = params->Get("binary_data_size");
    if (!size || !size->Is(Value::kNumber) || !size->integral || size->integer < 0 ||
        static_cast<uint64_t>(size->integer) > message.size() - offset) {
      return false;
    }
    InputView in;
    in.name = name->text;
    in.datatype = datatype->text;
    for (const Value& d : shape->items) {
      if (!d.Is(Value::kNumber) || !d.integral) return false;
      in.shape.push_back(d.integer);
    }
    r->inputs.push_back(std::move(in));
    r->raw.emplace_back(offset, static_cast<size_t>(size->integer));
    offset += static_cast<size_t>(size->integer);
  }
  if (offset != message.size()) return false;  // NOTE: Python words the extra bytes
  const Value* outputs = top.Get("outputs");
  if (outputs != nullptr) {
    if (!outputs->Is(Value::kArray) || outputs->items.size() > kMaxTensors) return false;
    for (const Value& item : outputs->items) {
      if (!item.Is(Value::kObject) || !OnlyKeys(item, {"name", "parameters"})) return false;
      const Value* name = item.Get("name");
      if (!name || !name->Is(Value::kString)) return false;
      bool binary = binary_output;
      if (const Value* params = item.Get("parameters")) {
        if (!params->Is(Value::kObject) || !OnlyKeys(*params, {"binary_data"})) return false;
        if (const Value* flag = params->Get("binary_data")) {
          if (!flag->Is(Value::kBool)) return false;
          binary = flag->boolean;
        }
      }
      if (!binary) return false;  // NOTE: JSON `data` outputs are the Python path's to write
      r->outputs.push_back(name->text);
    }
  }
  return !r->outputs.empty() || binary_output;
}

inline const char* Reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

// The head of an answer this front writes itself: binary outputs after `header_length`
// bytes of JSON, or (0) all JSON, as the Python frontend's responses are typed.
inline std::string ResponseHead(int status, size_t length, size_t header_length, bool close) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + Reason(status) + "\r\n";
  if (header_length > 0) {
    out += "Content-Type: application/octet-stream\r\nInference-Header-Content-Length: " +
           std::to_string(header_length) + "\r\n";
  } else {
    out += "Content-Type: application/json; charset=utf-8\r\n";
  }
  out += "Content-Length: " + std::to_string(length) + "\r\n";
  if (close) out += "Connection: close\r\n";
  return out + "\r\n";
}

// Blocking socket helpers. Each returns false when the peer is gone or the front stops.
class Io {
 public:
  Io(int stop_fd) : stop_fd_(stop_fd) {}

  // Wait until fd is readable (true), or timeout / stop (false).
  bool Readable(int fd, int timeout_ms) const {
    pollfd fds[2] = {{fd, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    while (true) {
      int n = poll(fds, 2, timeout_ms);
      if (n < 0 && errno == EINTR) continue;
      return n > 0 && fds[1].revents == 0;
    }
  }
  // Append what arrives on fd to buf.
  bool ReadMore(int fd, std::string* buf, int timeout_ms = kIdleMs) const {
    if (!Readable(fd, timeout_ms)) return false;
    char chunk[64 * 1024];
    while (true) {
      ssize_t n = recv(fd, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      buf->append(chunk, static_cast<size_t>(n));
      return true;
    }
  }
  // Read into buf until it holds `total` bytes, in place: capacity is reserved up front
  // (untouched, so not committed) and the string grows to at most twice what has arrived, so
  // a large body costs no chunk copies, and a client declaring one it never sends costs little.
  bool ReadBody(int fd, std::string* buf, size_t total) const {
    try {
      buf->reserve(std::min(total, kReserveCap));
    } catch (const std::bad_alloc&) {  // NOTE: then it grows as it comes
    }
    size_t have = buf->size();
    while (have < total) {
      if (buf->size() == have) {
        buf->resize(std::min(total, have + std::max<size_t>(have, 64 * 1024)));
      }
      if (!Readable(fd, kIdleMs)) return false;
      ssize_t n = recv(fd, &(*buf)[have], buf->size() - have, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      have += static_cast<size_t>(n);
    }
    buf->resize(have);
    return true;
  }
  static bool Send(int fd, const char* data, size_t len) {
    while (len > 0) {
      ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  }
  static bool Send(int fd, const std::string& a, const std::string& b) {
    iovec v[2] = {{const_cast<char*>(a.data()), a.size()}, {const_cast<char*>(b.data()), b.size()}};
    size_t done = 0, total = a.size() + b.size();
    while (done < total) {
      msghdr m{};
      iovec rest[2];
      int k = 0;
      size_t skip = done;
      for (auto& part : v) {
        if (skip >= part.iov_len) {
          skip -= part.iov_len;
          continue;
        }
        rest[k++] = {static_cast<char*>(part.iov_base) + skip, part.iov_len - skip};
        skip = 0;
      }
      m.msg_iov = rest;
      m.msg_iovlen = k;
      ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

 private:
  int stop_fd_;
};

}  // namespace http_front

// The listening sockets and the connection threads. Owned by the Bridge (shared, so a
// connection thread that outlives a Shutdown timeout still finds it).
class HttpFront : public std::enable_shared_from_this<HttpFront> {
 public:
  HttpFront(Bridge* bridge, std::string upstream, uint64_t max_body, std::string restrict_header,
            std::string restrict_value)
      : bridge_(bridge), upstream_(std::move(upstream)), max_body_(max_body),
        restrict_header_(http_front::Lower(restrict_header)),
        restrict_value_(std::move(restrict_value)) {
    stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (stop_fd_ < 0) throw std::runtime_error("eventfd failed");
  }
  ~HttpFront() {
    for (int fd : listeners_) close(fd);
    if (stop_fd_ >= 0) close(stop_fd_);
  }

  // Bind every address `host` resolves to, on one port (0: a free one); returns it.
  int Listen(const std::string& host, int port);
  void Start();
  void Shutdown();
  // Infer requests this front served itself, and forwarded to aiohttp (tests, benchmarks).
  std::pair<uint64_t, uint64_t> Counts() const { return {native_, forwarded_}; }

 private:
  struct Upstream {  // one client's connection to aiohttp, kept alive between requests
    int fd = -1;
    std::string in;
    std::chrono::steady_clock::time_point used;
  };

  void Accept();
  void Serve(int fd);
  void ServeRequests(int fd, Upstream* up);
  void Relay(int from, int to);
  // `message`: the request as read, head and body.
  bool Answer(int fd, const http_front::Head& head, std::string message, Upstream* up,
              bool* keep);
  bool Forward(int fd, const std::string& message, bool head_only, Upstream* up, bool* keep);
  int Exchange(int fd, const std::string& message, bool head_only, Upstream* up, bool* keep);
  void Tunnel(int fd, const std::string& buffered);
  int ConnectUpstream();
  void Track(int fd, bool on);
  bool Restricted(const http_front::Head& head) const;

  Bridge* bridge_;
  std::string upstream_;
  uint64_t max_body_;
  std::string restrict_header_, restrict_value_;
  int stop_fd_ = -1;
  std::vector<int> listeners_;
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable idle_;
  std::set<int> open_;  // sockets of live connections (client and upstream)
  int active_ = 0;      // connection threads running
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> native_{0}, forwarded_{0};
};

int HttpFront::Listen(const std::string& host, int port) {
  // NOTE: a connection takes up to three descriptors (client, relay, aiohttp's end): allow
  // as many as the hard limit does, not the soft 1024 most shells start with
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0) throw std::runtime_error(gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owner(found, &freeaddrinfo);
  int bound = port;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    sockaddr_storage address{};
    std::memcpy(&address, a->ai_addr, a->ai_addrlen);
    if (bound != 0) {  // NOTE: with port 0, every address shares the first one's port
      uint16_t net = htons(static_cast<uint16_t>(bound));
      if (a->ai_family == AF_INET) reinterpret_cast<sockaddr_in*>(&address)->sin_port = net;
      if (a->ai_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&address)->sin6_port = net;
    }
    if (bind(fd, reinterpret_cast<sockaddr*>(&address), a->ai_addrlen) != 0 ||
        listen(fd, 1024) != 0) {
      std::string why = std::strerror(errno);
      close(fd);
      for (int open_fd : listeners_) close(open_fd);
      listeners_.clear();
      throw std::runtime_error(why);
    }
    if (bound == 0) {
      sockaddr_storage got{};
      socklen_t len = sizeof got;
      getsockname(fd, reinterpret_cast<sockaddr*>(&got), &len);
      bound = ntohs(got.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&got)->sin_port);
    }
    listeners_.push_back(fd);
  }
  if (listeners_.empty()) throw std::runtime_error("no address to bind");
  return bound;
}

void HttpFront::Start() {
  acceptor_ = std::thread([self = shared_from_this()] { self->Accept(); });
}

void HttpFront::Accept() {
  std::vector<pollfd> fds;
  for (int fd : listeners_) fds.push_back({fd, POLLIN, 0});
  fds.push_back({stop_fd_, POLLIN, 0});
  while (true) {
    int n = poll(fds.data(), fds.size(), -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || fds.back().revents != 0) return;
    for (size_t i = 0; i + 1 < fds.size(); i++) {
      if (!(fds[i].revents & POLLIN)) continue;
      int fd = accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          pollfd stop = {stop_fd_, POLLIN, 0};
          poll(&stop, 1, 100);  // NOTE: the listener stays readable: back off, do not spin
        }
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_ || active_ >= http_front::kMaxConnections) {
          close(fd);
          continue;
        }
        active_++;
        open_.insert(fd);
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      try {
        std::thread([self = shared_from_this(), fd] { self->Serve(fd); }).detach();
      } catch (const std::system_error&) {  // NOTE: out of threads: refuse this one, go on
        std::lock_guard<std::mutex> lock(mu_);
        open_.erase(fd);
        close(fd);
        active_--;
      }
    }
  }
}

void HttpFront::Track(int fd, bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  if (on) {
    open_.insert(fd);
    if (stopping_) ::shutdown(fd, SHUT_RDWR);  // NOTE: opened after Shutdown's sweep
  } else {
    open_.erase(fd);
  }
}

void HttpFront::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);  // NOTE: wakes sends blocked on a client
  }
  uint64_t one = 1;
  ssize_t written = write(stop_fd_, &one, sizeof one);
  (void)written;
  if (acceptor_.joinable()) acceptor_.join();
  for (int fd : listeners_) close(fd);  // NOTE: no more connections queue in the backlog
  listeners_.clear();
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait_for(lock, std::chrono::seconds(5), [this] { return active_ == 0; });
}

bool HttpFront::Restricted(const http_front::Head& head) const {
  if (restrict_header_.empty()) return false;
  const std::string* sent = head.Header(restrict_header_);
  return sent == nullptr || *sent != restrict_value_;
}

void HttpFront::Serve(int fd) {
  Upstream up;
  try {
    ServeRequests(fd, &up);
  } catch (...) {  // NOTE: e.g. bad_alloc: this connection ends, the server does not
  }
  if (up.fd >= 0) {
    Track(up.fd, false);
    close(up.fd);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    open_.erase(fd);
    close(fd);
    active_--;
  }
  idle_.notify_all();
}

void HttpFront::ServeRequests(int fd, Upstream* up) {
  using namespace http_front;
  Io io(stop_fd_);
  std::string in;
  while (true) {
    Head head;
    HeadResult parsed = ParseHead(in, false, &head);
    // a head already begun (pipelined bytes) has its time from now
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kHeadMs);
    while (parsed == kIncomplete) {
      if (in.size() > kMaxHead) {
        parsed = kOdd;
        break;
      }
      int wait = kIdleMs;  // NOTE: between requests; a head once begun has kHeadMs in all
      if (!in.empty()) {
        wait = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now()).count());
        if (wait <= 0) return;
      }
      size_t from = in.size();
      if (!io.ReadMore(fd, &in, wait)) return;
      if (from == 0) {  // the head's first bytes: its time starts now
        deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kHeadMs);
      }
      // NOTE: only a new line can complete (or spoil) the head: no rescans byte by byte
      if (in.find('\n', from) != std::string::npos) parsed = ParseHead(in, false, &head);
    }
    // NOTE: framing we do not relay request by request, or a body aiohttp must refuse
    // (it stops reading at the limit): the rest of this connection is aiohttp's
    if (parsed == kOdd || head.length > max_body_) {
      Tunnel(fd, in);
      return;
    }
    if (head.expect_continue) {  // NOTE: even when the body came with the head, as aiohttp
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      if (!Io::Send(fd, kContinue.data(), kContinue.size())) return;
    }
    size_t total = head.size + head.length;
    if (in.size() < total && !io.ReadBody(fd, &in, total)) return;
    std::string message;
    if (in.size() == total) {
      message.swap(in);  // NOTE: the usual case: a large body is never copied here
    } else {  // pipelined: the next request's bytes stay
      message.assign(in, 0, total);
      in.erase(0, total);
      if (in.capacity() > kReserveCap / 64 && in.size() < in.capacity() / 4) in.shrink_to_fit();
    }
    bool keep = !head.close;
    if (!Answer(fd, head, std::move(message), up, &keep) || !keep) return;
  }
}

bool HttpFront::Answer(int fd, const http_front::Head& head, std::string message, Upstream* up,
                       bool* keep) {
  using namespace http_front;
  std::string model, version;
  bool infer = head.method == "POST" && InferTarget(head.target, &model, &version);
  // NOTE: no Host (HTTP/1.1 requires one) or a coded body: aiohttp's to refuse or decode
  if (infer && !Restricted(head) && head.Header("host") != nullptr &&
      head.Header("content-encoding") == nullptr) {
    auto p = std::make_unique<Pending>();
    p->arrival_ns = NowNs();
    std::shared_ptr<HttpReply> reply;
    bool taken = false;
    try {
      if (ParseInfer(message, head.size, head.Header("inference-header-content-length"), model,
                     version, &p->req)) {
        reply = std::make_shared<HttpReply>();
        p->http = reply;
        p->body = std::move(message);  // NOTE: parsed positions are offsets: they survive
        taken = bridge_->TakeHttp(p);
        if (!taken) message = std::move(p->body);
      }
    } catch (...) {  // NOTE: e.g. bad_alloc: Python answers it
      taken = false;
      if (p && message.empty()) message = std::move(p->body);
    }
    if (taken) {
      native_++;
      std::unique_lock<std::mutex> lock(reply->mu);
      while (!reply->done) {
        reply->cv.wait_for(lock, std::chrono::milliseconds(100));
        if (!reply->done && stopping_) return false;  // NOTE: lanes drain before the front stops
      }
      std::string head_out =
          ResponseHead(reply->status, reply->body.size(), reply->header_length, !*keep);
      return Io::Send(fd, head_out, reply->body);
    }
  }
  if (infer) forwarded_++;
  return Forward(fd, message, head.method == "HEAD", up, keep);
}

int HttpFront::ConnectUpstream() {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, upstream_.c_str(), sizeof address.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return -1;
  }
  Track(fd, true);
  return fd;
}

// A request for aiohttp: sent on this client's upstream connection, its answer relayed. A
// request that could not be sent on a kept-alive connection is sent once more on a new one.
bool HttpFront::Forward(int fd, const std::string& message, bool head_only, Upstream* up,
                        bool* keep) {
  auto now = std::chrono::steady_clock::now();
  bool stale = now - up->used > std::chrono::seconds(http_front::kUpstreamIdleS);
  if (up->fd >= 0 && (!up->in.empty() || stale)) {
    Track(up->fd, false);  // NOTE: bytes no request asked for, or aiohttp may be closing it
    close(up->fd);
    up->fd = -1;
  }
  up->used = now;
  for (int attempt = 0; attempt < 2; attempt++) {
    bool reused = up->fd >= 0;
    if (!reused) {
      up->fd = ConnectUpstream();
      up->in.clear();
      if (up->fd < 0) {
        std::string body = HttpErrorBody("the HTTP frontend is not available");
        http_front::Io::Send(fd, http_front::ResponseHead(503, body.size(), 0, true), body);
        return false;
      }
    }
    int done = Exchange(fd, message, head_only, up, keep);
    if (done > 0 && *keep) return true;
    Track(up->fd, false);
    close(up->fd);
    up->fd = -1;
    if (done > 0) return true;
    if (done < 0 || !reused) return false;
  }
  return false;
}

// 1: relayed; 0: the request could not be sent (a retry cannot run it twice); -1: failed
// after it was sent.
int HttpFront::Exchange(int fd, const std::string& message, bool head_only, Upstream* up,
                        bool* keep) {
  using namespace http_front;
  Io io(stop_fd_);
  if (!Io::Send(up->fd, message.data(), message.size())) return 0;
  Head head;
  while (true) {
    HeadResult parsed = ParseHead(up->in, true, &head);
    if (parsed == kIncomplete) {
      if (up->in.size() > kMaxHead) return -1;
      if (!io.ReadMore(up->fd, &up->in, -1)) return -1;
      continue;
    }
    if (parsed == kOdd) return -1;
    if (head.status >= 200) break;
    up->in.erase(0, head.size);  // NOTE: aiohttp's 100 Continue: the client had ours
  }
  bool until_close = false;
  uint64_t length = 0;
  if (head_only || head.status == 204 || head.status == 304) {
    length = 0;
  } else if (head.has_length) {
    length = head.length;
  } else {
    until_close = true;
  }
  if (head.close || until_close) *keep = false;
  if (!Io::Send(fd, up->in.data(), head.size)) return -1;
  up->in.erase(0, head.size);
  while (until_close || length > 0) {
    if (up->in.empty()) {
      if (!io.ReadMore(up->fd, &up->in, -1)) return until_close ? 1 : -1;
    }
    size_t n = until_close ? up->in.size() : std::min<uint64_t>(length, up->in.size());
    if (!Io::Send(fd, up->in.data(), n)) return -1;
    up->in.erase(0, n);
    if (!until_close) length -= n;
  }
  return 1;
}

// The rest of this connection, both ways, to and from its own aiohttp connection: one thread
// per direction, so neither side's unread data can stall the other. No timeouts here: aiohttp
// closes what it considers idle, and that ends both directions.
void HttpFront::Tunnel(int fd, const std::string& buffered) {
  int up = ConnectUpstream();
  if (up < 0) return;
  if (http_front::Io::Send(up, buffered.data(), buffered.size())) {
    std::thread upward;
    try {
      upward = std::thread([this, fd, up] {
        Relay(fd, up);
        ::shutdown(up, SHUT_WR);  // NOTE: the client is done sending; its answers may follow
      });
    } catch (const std::system_error&) {
    }
    if (upward.joinable()) {
      Relay(up, fd);
      ::shutdown(fd, SHUT_RDWR);  // NOTE: wakes the other direction
      ::shutdown(up, SHUT_RDWR);
      upward.join();
    }
  }
  Track(up, false);
  close(up);
}

void HttpFront::Relay(int from, int to) {
  http_front::Io io(stop_fd_);
  std::vector<char> chunk(http_front::kRelayChunk);
  while (io.Readable(from, -1)) {
    ssize_t got = recv(from, chunk.data(), chunk.size(), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0 || !http_front::Io::Send(to, chunk.data(), static_cast<size_t>(got))) return;
  }
}
