// Native gRPC frontend: grpc++ does HTTP/2 and framing in C++ threads, Python does the rest.
//
// Why: on a 2-core edge host the Python grpc.aio stack alone costs ~400-550 us of CPU per
// request, a C++ grpc++ server with no model ~60-130 us (benchmarks/serve_bench.py measures
// both). This module is the thinnest bridge: it knows no .proto (AsyncGenericService moves
// bytes), and its completion-queue threads never touch Python. A finished read is queued
// and an eventfd is signalled; the asyncio loop drains the queue (`poll`), parses the bytes
// with the tritonclient stubs, runs the same servicer as the grpc.aio frontend and answers
// with `finish(bytes)` or `abort(code, message)`. Unary RPCs only: streaming methods are
// answered UNIMPLEMENTED by the Python side.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

class Bridge;

// One unary call: waits for a request, reads its one message, is handed to Python, is
// answered once, then deletes itself when grpc reports the answer sent (or failed).
class Call {
 public:
  Call(Bridge* bridge, grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq)
      : bridge_(bridge), service_(service), cq_(cq), stream_(&ctx_) {
    service_->RequestCall(&ctx_, &stream_, cq_, cq_, this);
  }

  void Proceed(bool ok);  // completion-queue thread

  // Python thread, with the bridge's ops lock held.
  void StartFinish(const std::string& body) {
    grpc::Slice slice(body);
    grpc::ByteBuffer response(&slice, 1);
    state_ = kAnswering;
    stream_.WriteAndFinish(response, grpc::WriteOptions(), grpc::Status::OK, this);
  }

  void StartAbort(int code, const std::string& message) {
    state_ = kAnswering;
    stream_.Finish(grpc::Status(static_cast<grpc::StatusCode>(code), message), this);
  }

  const std::string& method() const { return ctx_.method(); }
  std::string peer() const { return ctx_.peer(); }

  py::bytes TakePayload() {
    std::vector<grpc::Slice> slices;
    std::string body;
    if (request_.Dump(&slices).ok()) {
      body.reserve(request_.Length());
      for (const auto& s : slices) body.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    request_.Clear();
    return py::bytes(body);
  }

 private:
  enum State { kWaiting, kReading, kHandedOver, kAnswering };
  Bridge* bridge_;
  grpc::AsyncGenericService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer request_;
  State state_ = kWaiting;
};

// What Python holds for a call: answer it once; later answers are ignored.
class CallHandle {
 public:
  CallHandle(Bridge* bridge, Call* call) : bridge_(bridge), call_(call) {}
  void Finish(py::bytes body);
  void Abort(int code, const std::string& message);
  std::string method() const { return method_; }
  std::string peer() const { return peer_; }
  bool answered() const { return call_ == nullptr; }

  std::string method_;
  std::string peer_;

 private:
  Bridge* bridge_;
  Call* call_;
};

class Bridge {
 public:
  Bridge(std::string address, int max_message_bytes, int threads)
      : address_(std::move(address)), max_message_bytes_(max_message_bytes),
        threads_(threads < 1 ? 1 : threads) {
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) throw std::runtime_error("eventfd failed");
  }

  ~Bridge() {
    Shutdown(0.0);
    if (efd_ >= 0) close(efd_);
  }

  int Start() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(address_, grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(max_message_bytes_);
    builder.SetMaxSendMessageSize(max_message_bytes_);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port is an error
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.RegisterAsyncGenericService(&service_);
    for (int i = 0; i < threads_; i++) queues_.push_back(builder.AddCompletionQueue());
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      server_.reset();
      throw std::runtime_error("cannot bind gRPC address " + address_);
    }
    for (auto& queue : queues_) {
      grpc::ServerCompletionQueue* cq = queue.get();
      workers_.emplace_back([this, cq] {
        for (int k = 0; k < kPendingPerQueue; k++) new Call(this, &service_, cq);
        void* tag;
        bool ok;
        while (cq->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(ok);
      });
    }
    return port;
  }

  int fileno() const { return efd_; }

  // Completion-queue thread: a request is read; hand it to Python.
  void Push(Call* call) {
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      ready_.push_back(call);
    }
    uint64_t one = 1;
    ssize_t written = write(efd_, &one, sizeof one);
    (void)written;  // NOTE: only fails when the counter would overflow; a wakeup is pending then
  }

  // Python thread: every call read so far, as (handle, method, payload).
  py::list Poll() {
    uint64_t count;
    ssize_t got = read(efd_, &count, sizeof count);  // NOTE: before the swap; see Push
    (void)got;
    std::deque<Call*> ready;
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      ready.swap(ready_);
    }
    py::list out;
    for (Call* call : ready) {
      auto handle = std::make_unique<CallHandle>(this, call);
      handle->method_ = call->method();
      handle->peer_ = call->peer();
      py::bytes payload = call->TakePayload();
      py::str method(handle->method_);
      out.append(py::make_tuple(py::cast(std::move(handle)), method, payload));
    }
    return out;
  }

  // Python thread: start an answer unless the bridge is closed (then the call is dropped).
  template <typename Fn>
  void Answer(Fn&& fn) {
    std::lock_guard<std::mutex> lock(ops_mu_);
    if (closed_) return;
    fn();
  }

  void Shutdown(double grace_s) {
    if (!server_) return;
    {
      py::gil_scoped_release release;
      auto deadline = std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));
      server_->Shutdown(deadline);  // waits for answers until the deadline, then cancels
      {
        std::lock_guard<std::mutex> lock(ops_mu_);
        closed_ = true;
      }
      for (auto& queue : queues_) queue->Shutdown();
      for (auto& worker : workers_) worker.join();
    }
    workers_.clear();
    server_.reset();
    std::deque<Call*> left;
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      left.swap(ready_);
    }
    // NOTE: read but never handed to Python; their queue is gone, so free them here
    for (Call* call : left) delete call;
  }

 private:
  static constexpr int kPendingPerQueue = 32;
  std::string address_;
  int max_message_bytes_;
  int threads_;
  int efd_ = -1;
  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> workers_;
  std::mutex queue_mu_;
  std::deque<Call*> ready_;
  std::mutex ops_mu_;
  bool closed_ = false;
};

void Call::Proceed(bool ok) {
  switch (state_) {
    case kWaiting:
      if (!ok) {  // the queue is shutting down
        delete this;
        return;
      }
      new Call(bridge_, service_, cq_);
      state_ = kReading;
      stream_.Read(&request_, this);
      return;
    case kReading:
      if (!ok) {  // the client went away before sending its message
        state_ = kAnswering;
        stream_.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "no request message"), this);
        return;
      }
      state_ = kHandedOver;
      bridge_->Push(this);
      return;
    case kHandedOver:  // never gets a tag: nothing is pending while Python holds it
      return;
    case kAnswering:
      delete this;
      return;
  }
}

void CallHandle::Finish(py::bytes body) {
  if (call_ == nullptr) return;
  Call* call = call_;
  call_ = nullptr;
  std::string data = body;  // NOTE: copied with the GIL held, sent without it
  bridge_->Answer([&] { call->StartFinish(data); });
}

void CallHandle::Abort(int code, const std::string& message) {
  if (call_ == nullptr) return;
  Call* call = call_;
  call_ = nullptr;
  bridge_->Answer([&] { call->StartAbort(code, message); });
}

}  // namespace

PYBIND11_MODULE(_grpc_bridge, m) {
  m.doc() = "grpc++ server that hands unary calls to Python through an eventfd queue";
  py::class_<CallHandle>(m, "Call")
      .def("finish", &CallHandle::Finish, py::arg("response"))
      .def("abort", &CallHandle::Abort, py::arg("code"), py::arg("message"))
      .def_property_readonly("method", &CallHandle::method)
      .def_property_readonly("peer", &CallHandle::peer)
      .def_property_readonly("answered", &CallHandle::answered);
  py::class_<Bridge>(m, "Bridge")
      .def(py::init<std::string, int, int>(), py::arg("address"), py::arg("max_message_bytes"),
           py::arg("threads") = 1)
      .def("start", &Bridge::Start)
      .def("fileno", &Bridge::fileno)
      .def("poll", &Bridge::Poll)
      .def("shutdown", &Bridge::Shutdown, py::arg("grace_s"));
}
