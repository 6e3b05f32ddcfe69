// EcsoSession (see session.hpp): checks the config, builds the chat frame and the engine, and runs
// each call's plan under the session's lock with the call's token installed.
#include "ecso/session.hpp"

#include "ecso/conversation_plan.hpp"
#include "ecso/errors.hpp"
#include "ecso/single_turn_plan.hpp"

namespace ecso {

EcsoSession::EcsoSession(std::shared_ptr<const Model> model, EcsoConfig config)
    : model_(std::move(model)), config_(std::move(config)) {
    if (!model_) {
        throw ConfigError("a session needs a loaded model");
    }
    config_.validate();
    frame_ = ChatFrame::build(*model_, config_);
    engine_ = std::make_unique<DecodingEngine>(model_, config_);
}

uint32_t EcsoSession::n_ctx() const { return engine_->n_ctx(); }

void EcsoSession::cancel() { engine_->cancel(); }

EcsoResult EcsoSession::run(const RgbImage & image, const std::string & query, const CallOptions & call) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    DecodingEngine::ActiveCall active(*engine_, call);
    return SingleTurnPlan(*engine_, frame_).run(image, query, call, true);
}

EcsoResult EcsoSession::answer(const RgbImage & image, const std::string & query, const CallOptions & call) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    DecodingEngine::ActiveCall active(*engine_, call);
    return SingleTurnPlan(*engine_, frame_).run(image, query, call, false);
}

EcsoResult EcsoSession::judge(const RgbImage & image, const std::string & query, const std::string & response,
                              const CallOptions & call) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    DecodingEngine::ActiveCall active(*engine_, call);
    return SingleTurnPlan(*engine_, frame_).judge(image, query, response);
}

EcsoResult EcsoSession::chat(const Conversation & messages, const CallOptions & call, bool protect) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    DecodingEngine::ActiveCall active(*engine_, call);
    return ConversationPlan(*engine_, frame_, conversations_).run(messages, call, protect);
}

ConversationCache::Stats EcsoSession::cache_stats() {
    std::lock_guard<std::mutex> lock(run_mutex_);
    return conversations_.stats(engine_->embeddings());
}

void EcsoSession::clear_cache() {
    std::lock_guard<std::mutex> lock(run_mutex_);
    conversations_.clear(engine_->embeddings());
}

}  // namespace ecso
