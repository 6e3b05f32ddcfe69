// The conversation plan (see conversation_plan.hpp): its prompts, their budgets, and the four steps.
#include "ecso/conversation_plan.hpp"

#include <algorithm>
#include <map>

#include "ecso/errors.hpp"
#include "ecso/prompts.hpp"
#include "ecso/session_internal.hpp"
#include "ecso/verdict.hpp"

namespace ecso {
namespace {

PromptPart text_part(const std::string & text) { return {text, false, nullptr, false}; }

// The hints of step 4: one image's caption as the paper gives it, or each image's, numbered.
std::string hints(const std::vector<std::string> & captions, bool numbered) {
    if (!numbered) {
        return captions.empty() ? std::string() : captions.front();
    }
    std::string out;
    for (size_t k = 0; k < captions.size(); ++k) {
        out += (k ? "\n" : "") + std::string("Image ") + std::to_string(k + 1) + ": " + captions[k];
    }
    return out;
}

}  // namespace

std::vector<RenderMessage> ConversationPlan::system_messages(const Conversation & messages) const {
    std::vector<RenderMessage> out;
    for (const ChatMessage & m : messages) {
        if (m.role == "system") {
            out.push_back({"system", {text_part(message_text(m))}});
        }
    }
    if (out.empty() && !frame_.system_prompt.empty()) {
        out.push_back({"system", {text_part(frame_.system_prompt)}});
    }
    return out;
}

std::vector<RenderMessage> ConversationPlan::config_system(const Conversation & messages) const {
    const bool own_system = std::any_of(messages.begin(), messages.end(),
                                        [](const ChatMessage & m) { return m.role == "system"; });
    return own_system ? std::vector<RenderMessage>() : system_messages(messages);
}

Prompt ConversationPlan::answer_prompt(const Conversation & messages) const {
    std::vector<RenderMessage> render = config_system(messages);
    size_t image = 0;
    for (const ChatMessage & m : messages) {
        RenderMessage r{m.role, {}};
        for (const ChatPart & part : m.content) {
            if (part.image) {
                r.content.push_back({std::string(), false, &images_[image++].prompt, false});
            } else {
                r.content.push_back(text_part(part.text));
            }
        }
        render.push_back(std::move(r));
    }
    return Prompt::build_parts(model_, render_conversation(frame_, render));
}

Prompt ConversationPlan::image_prompt(const Conversation & messages, const std::vector<const Image *> & images,
                                      const std::string & text) const {
    std::vector<RenderMessage> render = system_messages(messages);
    RenderMessage user{"user", {}};
    if (config_.image_placement == ImagePlacement::AfterText) {
        user.content.push_back(text_part(text));
    }
    for (const Image * image : images) {
        user.content.push_back({std::string(), false, &image->prompt, false});
    }
    if (config_.image_placement == ImagePlacement::BeforeText) {
        user.content.push_back(text_part(text));
    }
    render.push_back(std::move(user));
    return Prompt::build_parts(model_, render_conversation(frame_, render));
}

Prompt ConversationPlan::judge_prompt(const Conversation & messages, const std::string & query,
                                      const std::string & response, int32_t judge_tokens) const {
    auto build = [&](size_t chars) {
        return image_prompt(messages, distinct_,
                            prompts::fill(config_.judge_template,
                                          {{"query", query}, {"response", prompts::cut_chars(response, chars)}}));
    };
    const int32_t room = static_cast<int32_t>(engine_.n_ctx()) - judge_reserve(judge_tokens);
    return largest_fitting_quote(build, config_.response_cut_chars, prompts::count_chars(response), room);
}

Prompt ConversationPlan::text_only_prompt(const Conversation & messages, const std::string & query,
                                          const std::vector<std::string> & captions) const {
    std::vector<RenderMessage> render = config_system(messages);
    size_t image = 0;
    for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage & m = messages[i];
        if (i + 1 == messages.size()) {
            render.push_back({m.role, {text_part(prompts::fill(config_.text_only_template,
                                                               {{"query", query}, {"caption", hints(captions, numbered_)}}))}});
            break;
        }
        RenderMessage r{m.role, {}};
        for (const ChatPart & part : m.content) {
            if (part.image) {
                r.content.push_back(text_part("[Image " + std::to_string(images_[image++].number) + "]"));
            } else {
                r.content.push_back(text_part(part.text));
            }
        }
        render.push_back(std::move(r));
    }
    return Prompt::build_parts(model_, render_conversation(frame_, render));
}

EcsoResult ConversationPlan::run(const Conversation & messages, const CallOptions & call, bool protect) {
    engine_.forget_single_turn();  // the conversation cache lays out cells its own way
    struct Sharing {
        DecodingEngine & engine;
        explicit Sharing(DecodingEngine & e) : engine(e) { engine.share_encodings(true); }
        ~Sharing() { engine.share_encodings(false); }
    } sharing(engine_);
    engine_.throw_if_cancelled("answer");
    const auto t0 = Clock::now();
    const int32_t max_tokens = call.max_tokens;
    if (max_tokens < 1) {
        throw ConfigError("max_tokens must be at least 1 (got " + std::to_string(max_tokens) + ")");
    }
    validate_conversation(messages, config_.max_image_pixels);
    const bool reuse = config_.reuse_kv;
    KvSequences & kv = engine_.kv();
    auto & embeddings = engine_.embeddings();
    if (!reuse) {
        embeddings.clear();  // the reference path keeps nothing between calls
    }
    cache_.set_limits(config_.keep_conversations, config_.conversation_cache_mib);

    images_.clear();
    distinct_.clear();
    std::map<std::string, size_t> numbers;
    for (size_t i = 0; i < messages.size(); ++i) {
        for (const ChatPart & part : messages[i].content) {
            if (part.image) {
                const std::string id = image_content_id(*part.image);
                const auto found = numbers.emplace(id, numbers.size() + 1);
                images_.push_back({PromptImage{part.image.get(), id, false}, i, found.first->second});
            }
        }
    }
    std::vector<std::string> image_ids;
    for (const Image & im : images_) {
        if (im.number > distinct_.size()) {
            distinct_.push_back(&im);
            image_ids.push_back(im.prompt.id);
        }
    }
    cache_.touch_images(image_ids);
    // The paper's own step-4 prompt when the one image was sent with the question; otherwise
    // every image is named where it was sent and described, numbered, in the hints.
    numbered_ = distinct_.size() > 1 || std::any_of(images_.begin(), images_.end(), [&](const Image & im) {
                    return im.message + 1 != messages.size();
                });
    const std::string query = message_text(messages.back());
    const bool judged = protect && (!images_.empty() || config_.judge_text_only);
    const int32_t n = static_cast<int32_t>(engine_.n_ctx());
    const int32_t judge_tokens = judge_token_limit(config_);

    EcsoResult result;
    result.judged = judged;
    const Prompt p1 = answer_prompt(messages);
    result.image_tokens = p1.image_tokens();
    result.template_prefix_tokens = p1.positions_before_image();
    engine_.check_prompt_fits("answer", p1);
    // Built once, here, and used again in steps 3 and 4 (each build preprocesses its image).
    const std::string caption_text = prompts::fill(config_.caption_template, {{"query", query}});
    std::vector<Prompt> caption_prompts;
    int32_t text_only_empty_cells = 0;
    if (judged) {
        // Sized before step 1: a request whose later steps could not fit is refused now.
        struct Need {
            const char * step;
            int32_t tokens;
        };
        std::vector<Need> needs;
        if (guard_ == nullptr) {  // a guard model judges in a context of its own
            needs.push_back({"judge", image_prompt(messages, distinct_, prompts::fill(config_.judge_template,
                                                                         {{"query", query}, {"response", ""}}))
                                              .n_cells() + judge_reserve(judge_tokens)});
        }
        if (config_.verdict_override.value_or(true)) {
            for (const Image * image : distinct_) {
                caption_prompts.push_back(image_prompt(messages, {image}, caption_text));
                needs.push_back({"caption", caption_prompts.back().n_cells() + 1});
            }
            text_only_empty_cells =
                text_only_prompt(messages, query, std::vector<std::string>(distinct_.size())).n_cells();
            needs.push_back({"text_only", text_only_empty_cells + 1 + static_cast<int32_t>(distinct_.size())});
        }
        for (const Need & need : needs) {
            if (need.tokens > n) {
                throw ContextOverflowError("the conversation cannot be answered with ECSO in a context of " +
                                           std::to_string(n) + " tokens: step '" + need.step + "' alone needs " +
                                           std::to_string(need.tokens) +
                                           ", so nothing was run. Raise n_ctx (Model(..., n_ctx=...)) or shorten the "
                                           "conversation");
            }
        }
    }

    // Step 1: the conversation, from the saved turn it continues. Held back when judged.
    if (reuse) {
        cache_.restore_best(engine_, DecodingEngine::kSeqTextOnly, p1);
    } else {
        kv.clear();
    }
    std::vector<std::string> answer_pieces;
    const TextSink no_sink;
    const int32_t want_answer = config_.max_tokens_answer.value_or(max_tokens);
    result.steps.push_back(engine_.run_step("answer", DecodingEngine::kSeqAnswer, p1, want_answer,
                                            judged ? no_sink : call.on_text, &answer_pieces));
    result.initial_answer = result.steps.back().text;
    result.answer = result.initial_answer;
    if (reuse) {
        if (config_.reuse_answer_cells) {
            engine_.complete_answer(DecodingEngine::kSeqAnswer, result.steps.back());
        } else {
            // Generated cells differ from prefilled ones on some backends: keep the prompt's only,
            // so the next turn reuses what a fresh evaluation computes in the same batches.
            kv.truncate(DecodingEngine::kSeqAnswer, p1.items().size());
        }
        cache_.save(engine_, DecodingEngine::kSeqAnswer, p1.last_boundary());
        cache_.trim(embeddings);
        // The restored copy has served step 1 (which holds all it shared): freed, no cell past
        // the judge's shared prefix stays taken, and the judge's cells go where they go in an
        // empty cache.
        kv.drop(DecodingEngine::kSeqTextOnly);
    }
    auto finish = [&]() {
        if (reuse) {
            cache_.trim(embeddings);
        }
        result.seconds = seconds_since(t0);
        return result;
    };
    if (!judged) {
        return finish();
    }

    // Step 2: the paper's judge prompt, every image of the conversation before it (or a guard
    // model on the last user message and the answer).
    if (guard_ != nullptr) {
        record_guard_step(result, (*guard_)(query, result.initial_answer));
    } else {
        const Prompt p2 = judge_prompt(messages, query, result.initial_answer, judge_tokens);
        result.steps.push_back(engine_.run_step("judge", DecodingEngine::kSeqJudge, p2,
                                                std::min(judge_tokens, n - p2.n_cells()), no_sink, nullptr));
        if (config_.verdict_rule == VerdictRule::Logits) {
            result.p_yes = engine_.p_yes();
            result.steps.back().p_yes = result.p_yes;
            result.steps.back().text = *result.p_yes > 0.5 ? "yes" : "no";
        }
        kv.drop(DecodingEngine::kSeqJudge);
        result.verdict_text = result.steps.back().text;
        result.judged_unsafe = judge_verdict(result.verdict_text, config_.verdict_rule);
    }
    result.verdict_forced = config_.verdict_override.has_value();
    result.unsafe = config_.verdict_override.value_or(result.judged_unsafe);
    if (!result.unsafe) {
        SinkWriter writer(call.on_text);
        for (const auto & piece : answer_pieces) {
            writer.write(piece);
        }
        return finish();
    }

    // Step 3: a query-aware caption per image. The captions and the final answer share the room
    // step 4 has; when all cannot fit, the final answer keeps about half of it.
    const int32_t want_caption = config_.max_tokens_caption.value_or(max_tokens);
    const int32_t want_final = config_.max_tokens_text_only.value_or(max_tokens);
    const int32_t room4 = n - text_only_empty_cells;
    const int32_t final_share = std::min(want_final, std::max(1, room4 / 2));
    const int32_t per_caption =
        std::max<int32_t>(1, (room4 - final_share) / std::max<int32_t>(1, static_cast<int32_t>(distinct_.size())));
    for (size_t k = 0; k < distinct_.size(); ++k) {
        const std::string & id = distinct_[k]->prompt.id;
        std::optional<std::string> made = reuse ? cache_.caption(id, query) : std::nullopt;
        if (!made) {
            const std::string name = distinct_.size() == 1 ? "caption" : "caption_" + std::to_string(k + 1);
            const Prompt & p3 = caption_prompts[k];
            result.steps.push_back(engine_.run_step(name.c_str(), DecodingEngine::kSeqCaption, p3,
                                                    std::min({want_caption, n - p3.n_cells(), per_caption}), no_sink,
                                                    nullptr));
            kv.drop(DecodingEngine::kSeqCaption);
            made = result.steps.back().text;
            if (reuse) {
                cache_.remember_caption(id, query, *made);
            }
        }
        result.captions.push_back(*made);
    }

    // Step 4: eyes closed for the whole conversation; streamed live. Captions whose text
    // re-tokenizes longer than generated are cut until one answer token fits.
    std::vector<std::string> cut = result.captions;
    Prompt p4 = text_only_prompt(messages, query, cut);
    for (size_t chars = 0; p4.n_cells() + 1 > n;) {
        bool any = false;
        for (auto & c : cut) {
            chars = prompts::count_chars(c);
            if (chars > 0) {
                c = prompts::cut_chars(c, chars * 9 / 10);
                any = true;
            }
        }
        if (!any) {
            break;
        }
        p4 = text_only_prompt(messages, query, cut);
    }
    result.caption = hints(result.captions, numbered_);
    result.steps.push_back(engine_.run_step("text_only", DecodingEngine::kSeqTextOnly, p4,
                                            std::min(want_final, n - p4.n_cells()), call.on_text, nullptr));
    result.answer = result.steps.back().text;
    return finish();
}

}  // namespace ecso
