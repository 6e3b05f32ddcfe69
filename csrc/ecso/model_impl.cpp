// Loading and validating a text model + projector pair (see model_impl.hpp).
#include "ecso/model_impl.hpp"

#include <cstdlib>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "ecso/projector_families.hpp"
#include "ecso/projector_probe.hpp"

namespace ecso {

Model::Impl::Impl(const std::string & text_model_path, const std::string & mmproj_path, const ModelOptions & options)
    : encoder_cache_(options.encoder_cache_mib > (UINT64_MAX >> 20) ? UINT64_MAX : options.encoder_cache_mib << 20) {
    text_.emplace(text_model_path, options);
    projector_info_ = check_projector(mmproj_path, text_->info());
    admit_projector(text_model_path, mmproj_path);
    text_->load();

    mtmd_context_params cparams = mtmd_context_params_default();
    cparams.use_gpu = options.mmproj_gpu;
    cparams.n_threads = text_->n_threads_batch();  // the encoder is batch work
    cparams.print_timings = false;
    cparams.warmup = false;  // the first real encode warms up; loading stays fast
    cparams.flash_attn_type = flash_attn_type();
    cparams.cb_eval = &Model::Impl::encode_eval_callback;  // makes a long image encode cancellable
    cparams.cb_eval_user_data = this;
    clear_log_errors();
    mtmd_.reset(mtmd_init_from_file(mmproj_path.c_str(), text_->llama(), cparams));
    if (!mtmd_) {
        throw ModelLoadError("projector (mmproj) '" + mmproj_path + "': mtmd could not load it" + last_log_suffix() +
                             ". Use the mmproj file published with this text model");
    }
    if (!mtmd_support_vision(mtmd_.get())) {
        throw ModelLoadError("projector (mmproj) '" + mmproj_path +
                             "': it has no vision encoder. ecso-edge needs an image projector");
    }
}

std::string missing_layout_token_message(const Model::Impl & model) {
    return "text model '" + model.text_info().path + "': its vocabulary lacks a token that projector (mmproj) '" +
           model.projector_info().path + "' (type '" + model.projector_info().projector_type +
           "') lays its images out with. The two files are not a pair; use the text model this mmproj was made for";
}

void Model::Impl::admit_projector(const std::string & text_model_path, const std::string & mmproj_path) {
    const std::string & type = projector_info_.projector_type;
    const char * trust = std::getenv("ECSO_TRUST_PROJECTOR");
    const bool trusted = trust != nullptr && std::string(trust) == "1";
    if (!is_supported_projector_type(type) && !trusted) {
        throw ModelLoadError("projector (mmproj) '" + mmproj_path + "': projector type '" + type +
                             "' is not one ecso-edge supports yet (supported: " + supported_projector_types() +
                             "). Use a projector of a supported family, or set the environment variable "
                             "ECSO_TRUST_PROJECTOR=1 to run this one untested (it is still checked for crashes first)");
    }
    if (projector_info_.fully_validated) {
        projector_check_ = "tensor table";
        return;
    }
    ProbeOptions probe;
    probe.use_gpu = options().mmproj_gpu;
    probe.n_threads = text_->n_threads_batch();
    probe.flash_attn = !options().flash_attn ? "auto" : *options().flash_attn ? "on" : "off";
    projector_check_ = probe_projector(text_model_path, mmproj_path, probe) == ProbeOutcome::kCached
                           ? "child process (cached)"
                           : "child process";
}

bool Model::Impl::encode_eval_callback(ggml_tensor * /*node*/, bool ask, void * model) {
    // ggml's scheduler asks, node by node, whether the caller wants to see a node; it computes up
    // to each node the answer is yes for, then calls again with ask=false, and stops the graph
    // when that call returns false. Every kNodesPerCheck nodes is a point where a cancel lands:
    // a few milliseconds of a CLIP-L layer, and a few dozen graph splits per encode.
    constexpr uint32_t kNodesPerCheck = 32;
    const auto * self = static_cast<const Model::Impl *>(model);
    if (ask) {
        return ++self->encode_nodes_ % kNodesPerCheck == 0;
    }
    const EncodeObserver * observer = self->encode_observer_.load();
    if (observer == nullptr) {
        return true;
    }
    if (observer->progress != nullptr && *observer->progress) {
        try {
            (*observer->progress)(Progress{observer->step, "encode", static_cast<int32_t>(self->encode_nodes_), 0});
        } catch (...) {
            return false;  // nothing may unwind through ggml's C code: a failing sink stops the encode
        }
    }
    return observer->cancel == nullptr || !observer->cancel->cancelled();
}

}  // namespace ecso
