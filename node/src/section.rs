//! One section document: an Automerge document whose shape follows the catalogue.
//!
//! Plain fields are scalars (or lists of text) under the root map. A section with a
//! collection keeps it as a map from item id to item, so concurrent additions at two agencies
//! never collide; progress notes and referral history are lists that concurrent appends merge.
//! Every change is committed with the caller's actor id (`<agency>|<user>`), a timestamp and a
//! message that names the fields touched, never their values.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use serde_json::Value as Json;

use crate::catalogue::{
    self, CollectionSpec, FieldSpec, FieldValue, SectionSpec, GOALS, MAX_ITEMS, MAX_NOTES,
    REFERRALS,
};
use crate::error::{Error, Result};
use crate::model::{parse_actor, Caller, SectionKey, Timestamp};

static LOADED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Documents loaded by this process (a metric: catch-up should load only what changed).
pub fn documents_loaded() -> u64 {
    LOADED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A validated change to one section.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Set plain fields.
    Set(Vec<(&'static FieldSpec, FieldValue)>),
    /// Add a goal (the `goals` section).
    AddGoal {
        /// New goal id.
        id: String,
        /// Field values: domain, text, horizon, status, target_date.
        fields: Vec<(&'static FieldSpec, FieldValue)>,
    },
    /// Change a goal and/or add a progress note.
    UpdateGoal {
        /// The goal.
        id: String,
        /// Fields to change.
        fields: Vec<(&'static FieldSpec, FieldValue)>,
        /// A progress note to append.
        note: Option<String>,
    },
    /// Add a referral (the `services` section), status `proposed`.
    AddReferral {
        /// New referral id.
        id: String,
        /// Field values: service, provider_agency, status.
        fields: Vec<(&'static FieldSpec, FieldValue)>,
        /// An optional note for the first history step.
        note: Option<String>,
    },
    /// Move a referral to a new status.
    UpdateReferral {
        /// The referral.
        id: String,
        /// The new status.
        status: String,
        /// An optional note.
        note: Option<String>,
    },
}

impl Edit {
    /// A summary for the change message: the fields touched, never their values.
    pub fn summary(&self, section: &str) -> String {
        let names = |fields: &[(&FieldSpec, FieldValue)]| {
            fields
                .iter()
                .map(|(f, _)| format!("{section}.{}", f.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Edit::Set(fields) => format!("set {}", names(fields)),
            Edit::AddGoal { id, .. } => format!("add goal {id}"),
            Edit::UpdateGoal { id, fields, note } => {
                let mut parts: Vec<String> =
                    fields.iter().map(|(f, _)| f.name.to_string()).collect();
                if note.is_some() {
                    parts.push("progress note".into());
                }
                format!("update goal {id}: {}", parts.join(", "))
            }
            Edit::AddReferral { id, .. } => format!("add referral {id}"),
            Edit::UpdateReferral { id, status, .. } => format!("referral {id} -> {status}"),
        }
    }
}

/// One entry of a section's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeInfo {
    /// Agency of the actor, or `unknown` for a foreign actor id.
    pub agency: String,
    /// User of the actor.
    pub user: String,
    /// Commit time, unix milliseconds.
    pub time_ms: i64,
    /// The change message (what changed, never values).
    pub summary: String,
    /// The change hash, hex.
    pub hash: String,
}

/// A section document in memory.
pub struct SectionDoc {
    doc: AutoCommit,
}

impl SectionDoc {
    /// An empty document.
    pub fn new() -> Self {
        Self {
            doc: AutoCommit::new(),
        }
    }

    /// Loads a document from its snapshot and the change chunks stored after it.
    pub fn load(snapshot: Option<&[u8]>, chunks: &[Vec<u8>]) -> Result<Self> {
        LOADED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut doc = match snapshot {
            Some(bytes) => AutoCommit::load(bytes)?,
            None => AutoCommit::new(),
        };
        for chunk in chunks {
            doc.load_incremental(chunk)?;
        }
        Ok(Self { doc })
    }

    /// Current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Saves the whole document (for compaction and snapshots).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Saves the whole document without compression (tests that scan raw bytes use it).
    pub fn save_nocompress(&mut self) -> Vec<u8> {
        self.doc.save_nocompress()
    }

    /// Applies an edit as `caller` at time `at` and returns the encoded change, or an error
    /// (naming the problem) that leaves the stored document untouched.
    pub fn apply(
        &mut self,
        spec: &SectionSpec,
        caller: &Caller,
        edit: &Edit,
        at: Timestamp,
    ) -> Result<Vec<u8>> {
        let before = self.doc.get_heads();
        self.doc.set_actor(caller.actor());
        let author = format!("{}/{}", caller.agency, caller.user);
        match edit {
            Edit::Set(fields) => {
                for (f, v) in fields {
                    put_value(&mut self.doc, &ROOT, f.name, v)?;
                }
            }
            Edit::AddGoal { id, fields } => {
                let goals = self.collection(spec, &GOALS)?;
                self.add_item(&goals, id, fields)?;
                let item = self.item(&goals, id, "goal")?;
                self.doc.put_object(&item, "progress", ObjType::List)?;
            }
            Edit::UpdateGoal { id, fields, note } => {
                let goals = self.collection(spec, &GOALS)?;
                let item = self.item(&goals, id, "goal")?;
                for (f, v) in fields {
                    put_value(&mut self.doc, &item, f.name, v)?;
                }
                if let Some(text) = note {
                    let list = self.list(&item, "progress")?;
                    self.append_entry(&list, &[("author", &author), ("text", text)], at)?;
                }
            }
            Edit::AddReferral { id, fields, note } => {
                let refs = self.collection(spec, &REFERRALS)?;
                self.add_item(&refs, id, fields)?;
                let item = self.item(&refs, id, "referral")?;
                let history = self.doc.put_object(&item, "history", ObjType::List)?;
                let mut entry = vec![("status", "proposed"), ("by", author.as_str())];
                if let Some(n) = note {
                    entry.push(("note", n));
                }
                self.append_entry(&history, &entry, at)?;
            }
            Edit::UpdateReferral { id, status, note } => {
                let refs = self.collection(spec, &REFERRALS)?;
                let item = self.item(&refs, id, "referral")?;
                let current = match self.doc.get(&item, "status")? {
                    Some((Value::Scalar(v), _)) => v.as_str().unwrap_or_default().to_string(),
                    _ => String::new(),
                };
                if !catalogue::referral_step_allowed(&current, status) {
                    return Err(Error::invalid(format!(
                        "a referral that is {current} cannot move to {status}"
                    )));
                }
                self.doc.put(&item, "status", status.as_str())?;
                let history = self.list(&item, "history")?;
                let mut entry = vec![("status", status.as_str()), ("by", author.as_str())];
                if let Some(n) = note {
                    entry.push(("note", n));
                }
                self.append_entry(&history, &entry, at)?;
            }
        }
        let options = CommitOptions::default()
            .with_message(edit.summary(spec_name(spec)))
            .with_time(at.as_millis());
        self.doc.commit_with(options);
        Ok(self.doc.save_after(&before))
    }

    /// Everything in this document that is not in the history of `heads`.
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// Whether changes were loaded whose dependencies are missing.
    pub fn has_missing_deps(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// The actor and hash of every change not in the history of `heads`.
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<(automerge::ActorId, ChangeHash)> {
        // The metadata only: building whole changes re-encodes every operation.
        self.doc
            .get_changes_meta(heads)
            .into_iter()
            .map(|c| (c.actor.into_owned(), c.hash))
            .collect()
    }

    /// Loads changes made elsewhere (another session or, later, another agency).
    pub fn merge_changes(&mut self, bytes: &[u8]) -> Result<()> {
        self.doc.load_incremental(bytes)?;
        Ok(())
    }

    /// The document as JSON.
    pub fn render(&self) -> Json {
        serde_json::to_value(automerge::AutoSerde::from(&self.doc)).unwrap_or(Json::Null)
    }

    /// One item of a collection as JSON.
    pub fn render_item(&self, collection: &str, id: &str) -> Json {
        self.render()
            .get(collection)
            .and_then(|c| c.get(id))
            .cloned()
            .unwrap_or(Json::Null)
    }

    /// Every change, in causal order.
    pub fn history(&mut self) -> Vec<ChangeInfo> {
        self.doc
            .get_changes(&[])
            .into_iter()
            .map(|c| {
                let (agency, user) = match parse_actor(c.actor_id()) {
                    Some((a, u)) => (a.to_string(), u),
                    None => ("unknown".into(), c.actor_id().to_hex_string()),
                };
                ChangeInfo {
                    agency,
                    user,
                    time_ms: c.timestamp(),
                    summary: c.message().map(String::from).unwrap_or_default(),
                    hash: c.hash().to_string(),
                }
            })
            .collect()
    }

    /// Whether an item with this id exists in the collection.
    pub fn has_item(&self, collection: &CollectionSpec, id: &str) -> bool {
        match self.doc.get(ROOT, collection.name) {
            Ok(Some((Value::Object(ObjType::Map), map))) => {
                matches!(
                    self.doc.get(&map, id),
                    Ok(Some((Value::Object(ObjType::Map), _)))
                )
            }
            _ => false,
        }
    }

    fn collection(&mut self, spec: &SectionSpec, want: &'static CollectionSpec) -> Result<ObjId> {
        if !spec.collection.is_some_and(|c| std::ptr::eq(c, want)) {
            return Err(Error::invalid(format!(
                "section `{}` holds no {}",
                spec_name(spec),
                want.name
            )));
        }
        match self.doc.get(ROOT, want.name)? {
            Some((Value::Object(ObjType::Map), id)) => Ok(id),
            _ => Ok(self.doc.put_object(ROOT, want.name, ObjType::Map)?),
        }
    }

    fn add_item(
        &mut self,
        collection: &ObjId,
        id: &str,
        fields: &[(&'static FieldSpec, FieldValue)],
    ) -> Result<()> {
        if self.doc.length(collection) >= MAX_ITEMS {
            return Err(Error::invalid(format!(
                "a plan holds at most {MAX_ITEMS} of these"
            )));
        }
        let item = self.doc.put_object(collection, id, ObjType::Map)?;
        self.doc.put(&item, "id", id)?;
        for (f, v) in fields {
            put_value(&mut self.doc, &item, f.name, v)?;
        }
        Ok(())
    }

    fn item(&self, collection: &ObjId, id: &str, what: &str) -> Result<ObjId> {
        match self.doc.get(collection, id)? {
            Some((Value::Object(ObjType::Map), obj)) => Ok(obj),
            _ => Err(Error::NotFound(format!(
                "{what} `{}`",
                id.chars().take(40).collect::<String>()
            ))),
        }
    }

    fn list(&mut self, parent: &ObjId, key: &str) -> Result<ObjId> {
        match self.doc.get(parent, key)? {
            Some((Value::Object(ObjType::List), id)) => Ok(id),
            _ => Ok(self.doc.put_object(parent, key, ObjType::List)?),
        }
    }

    fn append_entry(&mut self, list: &ObjId, fields: &[(&str, &str)], at: Timestamp) -> Result<()> {
        let len = self.doc.length(list);
        if len >= MAX_NOTES {
            return Err(Error::invalid(format!(
                "at most {MAX_NOTES} entries are kept here"
            )));
        }
        let entry = self.doc.insert_object(list, len, ObjType::Map)?;
        self.doc.put(&entry, "at_ms", at.as_millis())?;
        for (k, v) in fields {
            self.doc.put(&entry, *k, *v)?;
        }
        Ok(())
    }
}

/// Documents recently written, received or sent, each with the feed sequence of the last
/// change it holds, so the next edit, frame or merge of a busy section does not load it again
/// (loading parses and applies every stored chunk: most of a busy node's CPU). An entry is
/// used only while the store still says the section's last change is that sequence; a purge
/// forgets its sections. Least recently used entries leave first.
pub struct DocCache {
    capacity: usize,
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    docs: std::collections::HashMap<SectionKey, (u64, u64, SectionDoc)>,
    by_use: std::collections::BTreeMap<u64, SectionKey>,
    tick: u64,
    /// Bumped by every forget.
    forgets: u64,
}

impl DocCache {
    /// A cache of at most `capacity` documents.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock leaves a consistent map (every update is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the document of `key` if it is current at `seq` (a stale one is dropped).
    pub fn take(&self, key: &SectionKey, seq: u64) -> Option<SectionDoc> {
        let (at, _, doc) = {
            let mut inner = self.lock();
            let entry = inner.docs.remove(key)?;
            inner.by_use.remove(&entry.1);
            entry
        };
        // A stale document drops here, outside the lock.
        (at == seq).then_some(doc)
    }

    /// Whether the document of `key` is held, current at `seq`.
    pub fn contains(&self, key: &SectionKey, seq: u64) -> bool {
        self.lock()
            .docs
            .get(key)
            .is_some_and(|(at, _, _)| *at == seq)
    }

    /// The number of forgets so far: take it before checking that a document is current,
    /// and hand it to [`DocCache::keep`].
    pub fn ticket(&self) -> u64 {
        self.lock().forgets
    }

    /// Keeps `doc` as `key`'s document at `seq`, which the caller found current after taking
    /// `ticket`, unless sections were forgotten since (a purge cannot slip between the
    /// caller's check and the insert). Returns what it did not keep: `doc` or the documents
    /// it evicted, for the caller to drop outside the lock.
    #[must_use]
    pub fn keep(&self, key: SectionKey, seq: u64, doc: SectionDoc, ticket: u64) -> Vec<SectionDoc> {
        if self.capacity == 0 {
            return vec![doc];
        }
        let mut inner = self.lock();
        if inner.forgets != ticket {
            return vec![doc];
        }
        inner.tick += 1;
        let tick = inner.tick;
        let mut out = Vec::new();
        if let Some((_, old, replaced)) = inner.docs.insert(key.clone(), (seq, tick, doc)) {
            inner.by_use.remove(&old);
            out.push(replaced);
        }
        inner.by_use.insert(tick, key);
        while inner.docs.len() > self.capacity {
            let Some((_, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            out.extend(inner.docs.remove(&oldest).map(|(_, _, d)| d));
        }
        out
    }

    /// Forgets these sections' documents (a purge), and refuses every [`DocCache::keep`]
    /// whose ticket was taken before.
    pub fn forget<'a>(&self, keys: impl IntoIterator<Item = &'a SectionKey>) {
        let mut gone = Vec::new();
        {
            let mut inner = self.lock();
            inner.forgets += 1;
            for key in keys {
                if let Some((_, tick, doc)) = inner.docs.remove(key) {
                    inner.by_use.remove(&tick);
                    gone.push(doc);
                }
            }
        }
        drop(gone);
    }

    /// Documents held.
    pub fn len(&self) -> usize {
        self.lock().docs.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for SectionDoc {
    fn clone(&self) -> Self {
        Self {
            doc: self.doc.clone(),
        }
    }
}

impl Default for SectionDoc {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether two sets of heads are the same (in any order).
pub fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    a.len() == b.len() && a.iter().all(|h| b.contains(h))
}

/// Automerge change chunks (as `save_after` writes them), parsed one by one without loading
/// any document: each must be an uncompressed change chunk (a compressed one could hide its
/// size) whose checksum matches its hash and whose operations decode. An error for anything
/// else. Whether the changes make sense in a document (sequence numbers, the objects their
/// operations name) only loading them can tell.
pub fn parse_changes(bytes: &[u8]) -> Result<Vec<automerge::Change>> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let bad = || Error::invalid("the changes do not decode");
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        // magic (4), checksum (4), chunk type (1: a change), body length (unsigned LEB128),
        // body.
        if rest.len() < 9 || rest[..4] != MAGIC || rest[8] != 1 {
            return Err(bad());
        }
        let (mut len, mut shift, mut at) = (0u64, 0u32, 9usize);
        loop {
            let b = *rest.get(at).ok_or_else(bad)?;
            at += 1;
            len |= u64::from(b & 0x7f).checked_shl(shift).ok_or_else(bad)?;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(bad());
            }
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|&e| e <= rest.len())
            .ok_or_else(bad)?;
        let change = automerge::Change::try_from(&rest[..end]).map_err(|_| bad())?;
        // Parsing does not check the checksum: the first bytes of the change's hash.
        if change.hash().0[..4] != rest[4..8] {
            return Err(bad());
        }
        out.push(change);
        rest = &rest[end..];
    }
    Ok(out)
}

/// The heads a document with heads `heads` has after `changes`, when they extend it exactly:
/// each change depends only on those heads or on a change before it (never on nothing), so
/// none can be one the document already holds. `None` when that cannot be told without the document
/// (changes concurrent with older history, or repeated).
pub fn heads_after(heads: &[ChangeHash], changes: &[automerge::Change]) -> Option<Vec<ChangeHash>> {
    let mut now: Vec<ChangeHash> = heads.to_vec();
    let mut seen: Vec<ChangeHash> = Vec::with_capacity(changes.len());
    for c in changes {
        let hash = c.hash();
        if heads.contains(&hash) || seen.contains(&hash) {
            return None;
        }
        // A change with no dependencies could be the document's first.
        if c.deps().is_empty()
            || !c
                .deps()
                .iter()
                .all(|d| heads.contains(d) || seen.contains(d))
        {
            return None;
        }
        now.retain(|h| !c.deps().contains(h));
        now.push(hash);
        seen.push(hash);
    }
    now.sort();
    Some(now)
}

fn spec_name(spec: &SectionSpec) -> &'static str {
    spec.name
}

fn put_value(doc: &mut AutoCommit, obj: &ObjId, key: &str, value: &FieldValue) -> Result<()> {
    match value {
        FieldValue::Text(s) => doc.put(obj, key, s.as_str())?,
        FieldValue::Integer(i) => doc.put(obj, key, ScalarValue::Int(*i))?,
        FieldValue::Bool(b) => doc.put(obj, key, *b)?,
        FieldValue::List(items) => {
            let list = doc.put_object(obj, key, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                doc.insert(&list, i, item.as_str())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::spec_for;
    use crate::model::{AgencyId, Role};

    fn caller(user: &str) -> Caller {
        Caller {
            agency: AgencyId::parse("school.test").unwrap(),
            user: user.into(),
            role: Role::Coordinator,
            subjects: vec![],
        }
    }

    fn field(section: &str, name: &str, v: &str) -> (&'static FieldSpec, FieldValue) {
        let f = spec_for(section).unwrap().field(name).unwrap();
        (f, f.parse(section, v).unwrap())
    }

    fn set_grade(doc: &mut SectionDoc, user: &str, grade: &str, at: i64) -> Vec<u8> {
        doc.apply(
            spec_for("profile").unwrap(),
            &caller(user),
            &Edit::Set(vec![field("profile", "grade", grade)]),
            Timestamp::from_millis(at),
        )
        .unwrap()
    }

    #[test]
    fn changes_that_extend_the_heads_are_told_without_the_document() {
        let mut doc = SectionDoc::new();
        let first = set_grade(&mut doc, "a", "1", 1);
        let at_first = doc.heads();
        // Two changes in one buffer, as `save_after` sends them.
        set_grade(&mut doc, "a", "2", 2);
        set_grade(&mut doc, "b", "3", 3);
        let tail = doc.save_after(&at_first);
        let changes = parse_changes(&tail).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            heads_after(&at_first, &changes).as_deref(),
            Some(doc.heads().as_slice())
        );
        // Bytes that are not whole change chunks are an error, not a guess.
        assert!(parse_changes(&tail[..tail.len() - 1]).is_err());
        assert!(parse_changes(b"not automerge").is_err());
        assert!(parse_changes(&doc.save()).is_err(), "a saved document");
        assert!(parse_changes(&[]).unwrap().is_empty());
        // A chunk of another type (2: compressed) or a checksum that does not match.
        let mut typed = first.clone();
        typed[8] = 2;
        assert!(parse_changes(&typed).is_err(), "not an uncompressed change");
        let mut summed = first.clone();
        summed[5] ^= 0xff;
        assert!(parse_changes(&summed).is_err(), "checksum");
        assert!(parse_changes(&first).is_ok());

        // What cannot be told from the heads alone: changes already held, a first change
        // (it depends on nothing), a change concurrent with older history.
        let held = doc.heads();
        assert_eq!(heads_after(&held, &changes), None, "already held");
        let root = parse_changes(&first).unwrap();
        assert_eq!(heads_after(&at_first, &root), None, "a first change");
        let mut other = SectionDoc::load(None, std::slice::from_ref(&first)).unwrap();
        let side = set_grade(&mut other, "c", "4", 4);
        assert_eq!(
            heads_after(&held, &parse_changes(&side).unwrap()),
            None,
            "concurrent with history after its dependency"
        );
        // With two heads, a change that follows one of them extends them: the other stays.
        let mut two = doc.clone();
        two.merge_changes(&side).unwrap();
        assert_eq!(two.heads().len(), 2);
        let next = set_grade(&mut doc.clone(), "b", "5", 5);
        let extended = heads_after(&two.heads(), &parse_changes(&next).unwrap());
        two.merge_changes(&next).unwrap();
        assert!(same_heads(&extended.unwrap(), &two.heads()));
        // An actor's change also names its own previous one, here not a head: the document
        // would have to say whether it holds it.
        let again = set_grade(&mut doc.clone(), "a", "6", 6);
        let deps = parse_changes(&again).unwrap()[0].deps().to_vec();
        assert_eq!(deps.len(), 2, "the heads and actor a's own last change");
        assert_eq!(heads_after(&held, &parse_changes(&again).unwrap()), None);
    }

    #[test]
    fn concurrent_edits_from_two_copies_converge() {
        let spec = spec_for("profile").unwrap();
        let mut base = SectionDoc::new();
        let c0 = base
            .apply(
                spec,
                &caller("a"),
                &Edit::Set(vec![field("profile", "grade", "3")]),
                Timestamp::from_millis(1),
            )
            .unwrap();
        let mut one = SectionDoc::load(None, std::slice::from_ref(&c0)).unwrap();
        let mut two = SectionDoc::load(None, &[c0]).unwrap();
        let c1 = one
            .apply(
                spec,
                &caller("a"),
                &Edit::Set(vec![field("profile", "school", "Lincoln")]),
                Timestamp::from_millis(2),
            )
            .unwrap();
        let c2 = two
            .apply(
                spec,
                &caller("b"),
                &Edit::Set(vec![field("profile", "tier", "2")]),
                Timestamp::from_millis(3),
            )
            .unwrap();
        one.merge_changes(&c2).unwrap();
        two.merge_changes(&c1).unwrap();
        assert_eq!(one.render(), two.render());
        assert_eq!(one.render()["school"], "Lincoln");
        assert_eq!(one.render()["tier"], 2);
        let history = one.history();
        assert_eq!(history.len(), 3);
        assert!(history
            .iter()
            .any(|h| h.user == "b" && h.summary == "set profile.tier"));
    }

    #[test]
    fn goals_with_progress_notes() {
        let spec = spec_for("goals").unwrap();
        let mut doc = SectionDoc::new();
        let fields = vec![field("goals", "notes", "x")];
        assert!(doc
            .apply(
                spec,
                &caller("a"),
                &Edit::Set(fields),
                Timestamp::from_millis(1)
            )
            .is_ok());
        let goal_fields = vec![(&GOALS.fields[0], FieldValue::Text("academic".into()))];
        doc.apply(
            spec,
            &caller("a"),
            &Edit::AddGoal {
                id: "g1".into(),
                fields: goal_fields,
            },
            Timestamp::from_millis(2),
        )
        .unwrap();
        doc.apply(
            spec,
            &caller("a"),
            &Edit::UpdateGoal {
                id: "g1".into(),
                fields: vec![],
                note: Some("reading daily".into()),
            },
            Timestamp::from_millis(3),
        )
        .unwrap();
        let goal = doc.render_item("goals", "g1");
        assert_eq!(goal["domain"], "academic");
        assert_eq!(goal["progress"][0]["text"], "reading daily");
        assert_eq!(goal["progress"][0]["author"], "school.test/a");
        let missing = doc.apply(
            spec,
            &caller("a"),
            &Edit::UpdateGoal {
                id: "nope".into(),
                fields: vec![],
                note: None,
            },
            Timestamp::from_millis(4),
        );
        assert!(matches!(missing, Err(Error::NotFound(_))));
    }

    #[test]
    fn the_doc_cache_hands_out_only_current_documents() {
        let key = |n: u8| SectionKey {
            plan: crate::model::PlanId(uuid::Uuid::from_bytes([n; 16])),
            section: crate::model::SectionName::parse("goals").unwrap(),
        };
        let cache = DocCache::new(2);
        let keep = |n: u8, seq: u64| cache.keep(key(n), seq, SectionDoc::new(), cache.ticket());
        assert!(keep(1, 7).is_empty());
        assert!(
            cache.take(&key(1), 8).is_none(),
            "a newer change makes it stale"
        );
        assert!(cache.take(&key(1), 7).is_none(), "a stale entry is dropped");

        let ticket = cache.ticket();
        cache.forget([&key(2)]);
        assert_eq!(
            cache.keep(key(1), 7, SectionDoc::new(), ticket).len(),
            1,
            "a document checked before a purge is handed back, not kept"
        );
        assert!(cache.is_empty());

        assert!(keep(1, 1).is_empty());
        assert!(keep(2, 2).is_empty());
        assert!(cache.take(&key(1), 1).is_some());
        assert!(keep(1, 1).is_empty());
        assert_eq!(
            keep(3, 3).len(),
            1,
            "the evicted document is handed back, to be dropped outside the lock"
        );
        assert_eq!(cache.len(), 2);
        assert!(
            cache.take(&key(2), 2).is_none(),
            "the least recently used left first"
        );
        assert!(cache.take(&key(1), 1).is_some());

        assert!(keep(1, 1).is_empty());
        assert_eq!(
            keep(1, 2).len(),
            1,
            "a newer document of the same section replaces the older"
        );
        assert!(cache.take(&key(1), 2).is_some());
        assert!(keep(1, 1).is_empty());
        cache.forget([&key(1), &key(3)]);
        assert!(cache.is_empty(), "a purge forgets its sections");
    }
}
