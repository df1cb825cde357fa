// The native gRPC floor: a C++ grpc++ server (generic async API, no .proto compiled in) that
// answers every KServe v2 call perf_analyzer makes with a canned response, no model at all.
// serve_bench.py builds it when g++ and Debian's libgrpc++-dev are present and measures it
// beside the Python grpc.aio echo and our server, to show what a native frontend would leave
// for the model on the same host.
//
// usage: echo PORT CANNED_DIR STATS_FILE [THREADS]
//   CANNED_DIR holds <Method>.bin, serialized responses (written by grpc_echo.write_canned).
//   SIGUSR1 writes "<ModelInfer calls>\n" to STATS_FILE; SIGTERM exits 0.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

const std::string kPrefix = "/inference.GRPCInferenceService/";
std::map<std::string, std::string> g_canned;
std::atomic<long> g_infers{0};

// One call's life: wait for it, read its one request, answer, delete.
class Call {
 public:
  Call(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), stream_(&ctx_) {
    service_->RequestCall(&ctx_, &stream_, cq_, cq_, this);
  }

  void Proceed(bool ok) {
    if (state_ == kWaiting) {
      if (!ok) {  // shutting down
        delete this;
        return;
      }
      new Call(service_, cq_);
      state_ = kReading;
      stream_.Read(&request_, this);
    } else if (state_ == kReading) {
      state_ = kDone;
      auto it = g_canned.find(ctx_.method());
      if (!ok || it == g_canned.end()) {
        stream_.Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not in the echo"), this);
        return;
      }
      if (it->first == kPrefix + "ModelInfer") g_infers++;
      grpc::Slice slice(it->second);
      grpc::ByteBuffer response(&slice, 1);
      stream_.WriteAndFinish(response, grpc::WriteOptions(), grpc::Status::OK, this);
    } else {
      delete this;
    }
  }

 private:
  enum State { kWaiting, kReading, kDone };
  grpc::AsyncGenericService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer request_;
  State state_ = kWaiting;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s PORT CANNED_DIR STATS_FILE [THREADS]\n", argv[0]);
    return 2;
  }
  const std::string port = argv[1];
  const std::filesystem::path canned_dir = argv[2];
  const std::string stats_file = argv[3];
  const int threads = argc > 4 ? std::atoi(argv[4]) : 1;
  for (const auto& entry : std::filesystem::directory_iterator(canned_dir)) {
    if (entry.path().extension() != ".bin") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream body;
    body << in.rdbuf();
    g_canned[kPrefix + entry.path().stem().string()] = body.str();
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGUSR1);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // NOTE: before any thread starts

  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:" + port, grpc::InsecureServerCredentials());
  builder.RegisterAsyncGenericService(&service);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < threads; i++) queues.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "cannot listen on port %s\n", port.c_str());
    return 1;
  }
  std::vector<std::thread> workers;
  for (auto& queue : queues) {
    grpc::ServerCompletionQueue* cq = queue.get();
    workers.emplace_back([&service, cq] {
      for (int k = 0; k < 16; k++) new Call(&service, cq);
      void* tag;
      bool ok;
      while (cq->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(ok);
    });
  }
  std::printf("listening on %s\n", port.c_str());
  std::fflush(stdout);
  for (;;) {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGTERM) break;
    std::ofstream(stats_file + ".tmp") << g_infers.load() << "\n";
    std::filesystem::rename(stats_file + ".tmp", stats_file);
  }
  std::_Exit(0);  // NOTE: a probe; skip the orderly grpc shutdown
}
