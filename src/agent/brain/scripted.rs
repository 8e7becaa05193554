//! The scripted brain: a dialogue written in the agent's `script`, no model
//! and no account needed.
//!
//! ```json
//! {
//!   "start": "main",
//!   "greeting": "Pizza Palace, what can I get you?",
//!   "fallback": "Sorry, I did not get that.",
//!   "slots": {"size": {"pattern": "\\b(small|medium|large)\\b", "prompt": "Which size?"}},
//!   "states": {
//!     "main": {"intents": [
//!       {"name": "order", "keywords": ["pizza"], "require": ["size"],
//!        "reply": "One {size} pizza. Anything else?", "next": "more"},
//!       {"name": "agent", "dtmf": "0", "reply": "Transferring you.",
//!        "actions": [{"type": "transfer", "to": "+14155550100"}]}
//!     ]},
//!     "more": {"intents": [
//!       {"name": "done", "keywords": ["no", "that's all"], "reply": "Bye!",
//!        "actions": [{"type": "summary", "text": "Ordered a {size} pizza"}, {"type": "hangup"}]}
//!     ]}
//!   }
//! }
//! ```
//!
//! On each input the slots are extracted first (each slot's `pattern`, its
//! first group or the whole match; and the named groups of the matching
//! intent's `patterns`), then the current state's intents are tried in
//! order: an intent matches on its `dtmf` digits, any of its `keywords`
//! (whole words, case-insensitive) or any of its `patterns` (regex,
//! case-insensitive). A matched intent whose `require`d slots are not all
//! filled asks for the first missing one (its `prompt`) and completes when a
//! later input fills it. `{slot}` in replies and actions is replaced by the
//! slot's value; a name that is no slot by the call's variable of that
//! name (`{first_name}`, `{first_name|there}` with a default: see
//! [`super::template`]). No match: the state's `fallback`, else the dialogue's.
//!
//! [`ScriptedDialogue::parse`] validates the whole document once, naming
//! the path of each problem (`script.states.main.intents[0].next`).

use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::template::{self, AgentContext, Braces};
use super::{Action, Brain, BrainError, Conversation, Input, Message, Reply, Sink, emit};

/// The dialogue as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogueDoc {
    pub start: String,
    #[serde(default)]
    pub greeting: Option<String>,
    #[serde(default = "default_fallback")]
    pub fallback: String,
    #[serde(default)]
    pub slots: BTreeMap<String, SlotDoc>,
    pub states: BTreeMap<String, StateDoc>,
}

fn default_fallback() -> String {
    "Sorry, I did not understand that.".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotDoc {
    pub pattern: String,
    #[serde(default)]
    pub prompt: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDoc {
    #[serde(default)]
    pub intents: Vec<IntentDoc>,
    #[serde(default)]
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentDoc {
    pub name: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub dtmf: Option<String>,
    #[serde(default)]
    pub require: Vec<String>,
    pub reply: String,
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// A problem in a script, at a path such as `script.states.main.intents[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub path: String,
    pub message: String,
}

struct Intent {
    doc: IntentDoc,
    keywords: Vec<Regex>,
    patterns: Vec<Regex>,
}

struct State {
    intents: Vec<Intent>,
    fallback: Option<String>,
}

/// A validated dialogue, regexes compiled.
pub struct ScriptedDialogue {
    start: String,
    greeting: Option<String>,
    fallback: String,
    slots: BTreeMap<String, (Regex, Option<String>)>,
    states: BTreeMap<String, State>,
}

impl std::fmt::Debug for ScriptedDialogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedDialogue")
            .field("start", &self.start)
            .field("states", &self.states.keys().collect::<Vec<_>>())
            .finish()
    }
}

const MAX_PATTERN_LEN: usize = 1000;
const MAX_TEXT_LEN: usize = 2000;

fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!("must be at most {MAX_PATTERN_LEN} characters"));
    }
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("is not a valid regular expression: {e}"))
}

/// Renders a template: a slot's value first (what the caller said in
/// this dialogue), else the call's variable, else the default (see
/// [`super::template`]).
fn render(
    template: &str,
    slots: &BTreeMap<String, String>,
    context: Option<&AgentContext>,
) -> String {
    template::render(template, Braces::Single, |name| {
        slots
            .get(name)
            .or_else(|| context.and_then(|c| c.vars.get(name)))
            .map(String::as_str)
    })
}

impl ScriptedDialogue {
    /// Parses and validates `value`; `root` prefixes the error paths.
    pub fn parse(value: &serde_json::Value, root: &str) -> Result<Self, Vec<ScriptError>> {
        let doc: DialogueDoc = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." || path.is_empty() {
                root.to_string()
            } else {
                format!("{root}.{path}")
            };
            let message = e.into_inner().to_string();
            let message = message.split(" at line ").next().unwrap_or("").to_string();
            vec![ScriptError { path, message }]
        })?;
        Self::compile(doc, root)
    }

    fn compile(doc: DialogueDoc, root: &str) -> Result<Self, Vec<ScriptError>> {
        let mut errors = Vec::new();
        let mut bad = |path: String, message: &str| {
            errors.push(ScriptError {
                path,
                message: message.to_string(),
            })
        };
        if doc.states.is_empty() {
            bad(format!("{root}.states"), "must name at least one state");
        }
        if !doc.states.contains_key(&doc.start) {
            bad(format!("{root}.start"), "must name one of the states");
        }
        for (field, text) in [
            ("greeting", doc.greeting.as_deref()),
            ("fallback", Some(doc.fallback.as_str())),
        ] {
            if text.is_some_and(|t| t.chars().count() > MAX_TEXT_LEN) {
                bad(format!("{root}.{field}"), "must be at most 2000 characters");
            }
        }
        let mut slots = BTreeMap::new();
        for (name, slot) in &doc.slots {
            match compile(&slot.pattern) {
                Ok(re) => {
                    slots.insert(name.clone(), (re, slot.prompt.clone()));
                }
                Err(m) => bad(format!("{root}.slots.{name}.pattern"), &m),
            }
        }
        // Slots anyone may fill: defined ones and named groups of patterns.
        let mut known: Vec<String> = doc.slots.keys().cloned().collect();
        let mut states = BTreeMap::new();
        for (state_name, state) in &doc.states {
            let mut intents = Vec::new();
            for (i, intent) in state.intents.iter().enumerate() {
                let at = format!("{root}.states.{state_name}.intents[{i}]");
                if intent.keywords.is_empty() && intent.patterns.is_empty() && intent.dtmf.is_none()
                {
                    bad(at.clone(), "needs keywords, patterns or dtmf to match");
                }
                let mut keywords = Vec::new();
                for (k, word) in intent.keywords.iter().enumerate() {
                    if word.trim().is_empty() {
                        bad(format!("{at}.keywords[{k}]"), "must not be empty");
                        continue;
                    }
                    match compile(&format!(r"\b{}\b", regex::escape(word.trim()))) {
                        Ok(re) => keywords.push(re),
                        Err(m) => bad(format!("{at}.keywords[{k}]"), &m),
                    }
                }
                let mut patterns = Vec::new();
                for (p, pattern) in intent.patterns.iter().enumerate() {
                    match compile(pattern) {
                        Ok(re) => {
                            known.extend(re.capture_names().flatten().map(String::from));
                            patterns.push(re);
                        }
                        Err(m) => bad(format!("{at}.patterns[{p}]"), &m),
                    }
                }
                if let Some(d) = &intent.dtmf
                    && (d.is_empty()
                        || !d
                            .chars()
                            .all(|c| c.is_ascii_digit() || "*#ABCD".contains(c)))
                {
                    bad(format!("{at}.dtmf"), "must be DTMF digits (0-9, *, #, A-D)");
                }
                if let Some(next) = &intent.next
                    && !doc.states.contains_key(next)
                {
                    bad(format!("{at}.next"), "must name one of the states");
                }
                if intent.reply.chars().count() > MAX_TEXT_LEN {
                    bad(format!("{at}.reply"), "must be at most 2000 characters");
                }
                for (a, action) in intent.actions.iter().enumerate() {
                    let empty = match action {
                        Action::Transfer { to } | Action::WarmTransfer { to, .. } => {
                            to.trim().is_empty()
                        }
                        Action::SendDtmf { digits } => digits.trim().is_empty(),
                        Action::Summary { text } => text.trim().is_empty(),
                        Action::Hangup
                        | Action::OptOut
                        | Action::PauseRecording
                        | Action::ResumeRecording => false,
                    };
                    if empty {
                        bad(format!("{at}.actions[{a}]"), "needs a value");
                    }
                }
                intents.push(Intent {
                    doc: intent.clone(),
                    keywords,
                    patterns,
                });
            }
            states.insert(
                state_name.clone(),
                State {
                    intents,
                    fallback: state.fallback.clone(),
                },
            );
        }
        // Every required slot must be fillable. A `{name}` in a template
        // that is no slot is one of the call's variables (a contact's
        // `first_name`, say), known only per call: missing, it renders its
        // default or nothing (see `super::template`).
        for (state_name, state) in &doc.states {
            for (i, intent) in state.intents.iter().enumerate() {
                let at = format!("{root}.states.{state_name}.intents[{i}]");
                for (r, slot) in intent.require.iter().enumerate() {
                    if !known.contains(slot) {
                        bad(
                            format!("{at}.require[{r}]"),
                            "names no slot (define it in slots or as a named group)",
                        );
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            start: doc.start,
            greeting: doc.greeting,
            fallback: doc.fallback,
            slots,
            states,
        })
    }
}

/// The scripted brain's part of a [`Conversation`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ScriptState {
    state: String,
    #[serde(default)]
    slots: BTreeMap<String, String>,
    /// An intent waiting for a required slot: (state, intent index).
    #[serde(default)]
    pending: Option<(String, usize)>,
}

/// The brain over a [`ScriptedDialogue`]; `greeting` is the agent's own,
/// used when the script has none.
pub struct ScriptedBrain {
    dialogue: ScriptedDialogue,
    greeting: Option<String>,
}

impl ScriptedBrain {
    pub fn new(dialogue: ScriptedDialogue, greeting: Option<String>) -> Self {
        Self { dialogue, greeting }
    }

    fn load(&self, conv: &Conversation) -> Result<ScriptState, BrainError> {
        if conv.state.is_null() {
            return Ok(ScriptState {
                state: self.dialogue.start.clone(),
                ..ScriptState::default()
            });
        }
        let s: ScriptState = serde_json::from_value(conv.state.clone())
            .map_err(|e| BrainError::State(e.to_string()))?;
        if self.dialogue.states.contains_key(&s.state) {
            Ok(s)
        } else {
            // The script was edited and the state is gone: start over.
            Ok(ScriptState {
                state: self.dialogue.start.clone(),
                slots: s.slots,
                pending: None,
            })
        }
    }

    fn extract_slots(&self, text: &str, slots: &mut BTreeMap<String, String>) {
        for (name, (re, _)) in &self.dialogue.slots {
            if let Some(c) = re.captures(text) {
                let m = c.get(1).or_else(|| c.get(0));
                if let Some(m) = m {
                    slots.insert(name.clone(), m.as_str().trim().to_string());
                }
            }
        }
    }

    /// The first intent of `state` that matches, filling named groups.
    fn match_intent(
        &self,
        state: &State,
        input: &Input,
        slots: &mut BTreeMap<String, String>,
    ) -> Option<usize> {
        state.intents.iter().position(|intent| match input {
            Input::Dtmf(digits) => intent.doc.dtmf.as_deref() == Some(digits.as_str()),
            Input::Text(text) => {
                for re in &intent.patterns {
                    if let Some(c) = re.captures(text) {
                        for name in re.capture_names().flatten() {
                            if let Some(m) = c.name(name) {
                                slots.insert(name.to_string(), m.as_str().trim().to_string());
                            }
                        }
                        return true;
                    }
                }
                intent.keywords.iter().any(|re| re.is_match(text))
            }
        })
    }

    /// Completes `intent` or asks for its first missing slot.
    fn complete(
        &self,
        s: &mut ScriptState,
        state_name: &str,
        index: usize,
        ctx: Option<&AgentContext>,
    ) -> Option<Reply> {
        let intent = &self
            .dialogue
            .states
            .get(state_name)?
            .intents
            .get(index)?
            .doc;
        if let Some(missing) = intent.require.iter().find(|r| !s.slots.contains_key(*r)) {
            s.pending = Some((state_name.to_string(), index));
            let prompt = self
                .dialogue
                .slots
                .get(missing)
                .and_then(|(_, p)| p.clone())
                .unwrap_or_else(|| format!("What is the {}?", missing.replace('_', " ")));
            return Some(Reply {
                text: render(&prompt, &s.slots, ctx),
                actions: Vec::new(),
            });
        }
        s.pending = None;
        if let Some(next) = &intent.next {
            s.state = next.clone();
        }
        let actions = intent
            .actions
            .iter()
            .map(|a| match a {
                Action::Transfer { to } => Action::Transfer {
                    to: render(to, &s.slots, ctx),
                },
                Action::WarmTransfer {
                    to,
                    summary,
                    attended,
                } => Action::WarmTransfer {
                    to: render(to, &s.slots, ctx),
                    summary: summary.as_ref().map(|t| render(t, &s.slots, ctx)),
                    attended: *attended,
                },
                Action::SendDtmf { digits } => Action::SendDtmf {
                    digits: render(digits, &s.slots, ctx),
                },
                Action::Summary { text } => Action::Summary {
                    text: render(text, &s.slots, ctx),
                },
                Action::Hangup => Action::Hangup,
                Action::OptOut => Action::OptOut,
                Action::PauseRecording => Action::PauseRecording,
                Action::ResumeRecording => Action::ResumeRecording,
            })
            .collect();
        Some(Reply {
            text: render(&intent.reply, &s.slots, ctx),
            actions,
        })
    }

    /// The reply to one input, pure: state in, state and reply out.
    fn step(&self, s: &mut ScriptState, input: &Input, ctx: Option<&AgentContext>) -> Reply {
        if let Input::Text(text) = input {
            self.extract_slots(text, &mut s.slots);
        }
        let current = s.state.clone();
        if let Some(state) = self.dialogue.states.get(&current)
            && let Some(i) = self.match_intent(state, input, &mut s.slots)
            && let Some(reply) = self.complete(s, &current, i, ctx)
        {
            return reply;
        }
        if let Some((state_name, index)) = s.pending.clone()
            && let Some(reply) = self.complete(s, &state_name, index, ctx)
        {
            return reply;
        }
        let text = self
            .dialogue
            .states
            .get(&current)
            .and_then(|st| st.fallback.clone())
            .unwrap_or_else(|| self.dialogue.fallback.clone());
        Reply {
            text: render(&text, &s.slots, ctx),
            actions: Vec::new(),
        }
    }

    fn save(conv: &mut Conversation, s: &ScriptState) -> Result<(), BrainError> {
        conv.state = serde_json::to_value(s).map_err(|e| BrainError::State(e.to_string()))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Brain for ScriptedBrain {
    async fn greet(&self, conv: &mut Conversation, out: &Sink) -> Result<Reply, BrainError> {
        let s = self.load(conv)?;
        let text = self
            .dialogue
            .greeting
            .clone()
            .or_else(|| self.greeting.clone())
            .unwrap_or_default();
        let reply = Reply {
            text: render(&text, &s.slots, conv.context.as_deref()),
            actions: Vec::new(),
        };
        Self::save(conv, &s)?;
        if !reply.text.is_empty() {
            conv.messages.push(Message::assistant(reply.text.clone()));
        }
        emit(out, &reply);
        Ok(reply)
    }

    async fn respond(
        &self,
        conv: &mut Conversation,
        input: Input,
        out: &Sink,
    ) -> Result<Reply, BrainError> {
        let mut s = self.load(conv)?;
        let reply = self.step(&mut s, &input, conv.context.as_deref());
        Self::save(conv, &s)?;
        conv.messages.push(Message::user(input.as_history()));
        conv.messages.push(Message::assistant(reply.text.clone()));
        emit(out, &reply);
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pizza() -> serde_json::Value {
        json!({
            "start": "main",
            "greeting": "Pizza Palace, what can I get you?",
            "slots": {"size": {"pattern": "\\b(small|medium|large)\\b", "prompt": "Which size?"}},
            "states": {
                "main": {"intents": [
                    {"name": "order", "keywords": ["pizza"], "require": ["size"],
                     "reply": "One {size} pizza. Anything else?", "next": "more"},
                    {"name": "table", "patterns": ["table for (?P<people>\\d+)"],
                     "reply": "A table for {people}."},
                    {"name": "human", "dtmf": "0", "reply": "Transferring you.",
                     "actions": [{"type": "transfer", "to": "+14155550100"}]},
                    {"name": "stop", "keywords": ["stop calling"],
                     "reply": "Sorry to bother you, we won't call again. Goodbye.",
                     "actions": [{"type": "opt_out"}]}
                ], "fallback": "We sell pizza."},
                "more": {"intents": [
                    {"name": "done", "keywords": ["no", "that's all"], "reply": "Bye!",
                     "actions": [{"type": "summary", "text": "Ordered a {size} pizza"},
                                 {"type": "hangup"}]}
                ]}
            }
        })
    }

    fn brain() -> ScriptedBrain {
        ScriptedBrain::new(ScriptedDialogue::parse(&pizza(), "script").unwrap(), None)
    }

    async fn say(b: &ScriptedBrain, conv: &mut Conversation, input: Input) -> Reply {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        b.respond(conv, input, &tx).await.unwrap()
    }

    #[tokio::test]
    async fn intents_slots_states_and_actions() {
        let b = brain();
        let mut conv = Conversation::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let g = b.greet(&mut conv, &tx).await.unwrap();
        assert_eq!(g.text, "Pizza Palace, what can I get you?");
        assert!(matches!(
            rx.recv().await,
            Some(super::super::BrainEvent::Delta(_))
        ));

        let r = say(&b, &mut conv, Input::Text("I'd like a LARGE pizza".into())).await;
        assert_eq!(r.text, "One LARGE pizza. Anything else?");
        let r = say(&b, &mut conv, Input::Text("no, that's all".into())).await;
        assert_eq!(r.text, "Bye!");
        assert_eq!(
            r.actions,
            vec![
                Action::Summary {
                    text: "Ordered a LARGE pizza".into()
                },
                Action::Hangup
            ]
        );
        assert_eq!(conv.messages.len(), 5);
    }

    #[tokio::test]
    async fn an_opt_out_phrase_says_goodbye_then_opts_out() {
        let b = brain();
        let mut conv = Conversation::default();
        let r = say(&b, &mut conv, Input::Text("please stop calling me".into())).await;
        assert!(r.text.contains("won't call again"), "{}", r.text);
        assert_eq!(r.actions, vec![Action::OptOut]);
    }

    #[tokio::test]
    async fn a_missing_slot_is_asked_for_then_filled() {
        let b = brain();
        let mut conv = Conversation::default();
        let r = say(&b, &mut conv, Input::Text("a pizza please".into())).await;
        assert_eq!(r.text, "Which size?");
        let r = say(&b, &mut conv, Input::Text("medium".into())).await;
        assert_eq!(r.text, "One medium pizza. Anything else?");
    }

    #[tokio::test]
    async fn named_groups_fill_slots_and_dtmf_matches_and_fallback() {
        let b = brain();
        let mut conv = Conversation::default();
        let r = say(&b, &mut conv, Input::Text("a table for 4 please".into())).await;
        assert_eq!(r.text, "A table for 4.");
        let r = say(&b, &mut conv, Input::Dtmf("0".into())).await;
        assert_eq!(
            r.actions,
            vec![Action::Transfer {
                to: "+14155550100".into()
            }]
        );
        assert_eq!(conv.messages[2].content, "[DTMF 0]");
        let r = say(&b, &mut conv, Input::Text("what's the weather".into())).await;
        assert_eq!(r.text, "We sell pizza.");
    }

    #[test]
    fn keywords_match_whole_words_only() {
        let b = brain();
        let mut s = ScriptState {
            state: "more".into(),
            ..ScriptState::default()
        };
        let r = b.step(&mut s, &Input::Text("I know".into()), None);
        assert_eq!(r.text, default_fallback());
    }

    #[test]
    fn problems_are_named_by_path() {
        let mut doc = pizza();
        doc["start"] = json!("nowhere");
        doc["states"]["main"]["intents"][0]["next"] = json!("gone");
        doc["states"]["main"]["intents"][1]["patterns"] = json!(["(unclosed"]);
        doc["states"]["main"]["intents"][2]["reply"] = json!("x".repeat(2001));
        let errors = ScriptedDialogue::parse(&doc, "script").unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"script.start"), "{paths:?}");
        assert!(paths.contains(&"script.states.main.intents[0].next"));
        assert!(paths.contains(&"script.states.main.intents[1].patterns[0]"));
        assert!(paths.contains(&"script.states.main.intents[2].reply"));

        let errors = ScriptedDialogue::parse(
            &json!({"start": "a", "states": {"a": {"intents": [{"name": "x", "reply": 3}]}}}),
            "script",
        )
        .unwrap_err();
        assert_eq!(errors[0].path, "script.states.a.intents[0].reply");
    }
}
