//! Repeated texts (service names, span names, handler languages...) held once and named by
//! a number, for tables that keep many records naming few distinct texts.

use crate::collections::text::same_str;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Texts interned as numbers, each with its number of uses; a text nothing uses any more is
/// dropped and its number reused: the texts held are those in use, and the table's own
/// places stay at the most ever in use at once.
#[derive(Default)]
pub(crate) struct Interner {
    index: HashTable<u32>,
    entries: Vec<Interned>,
    free: Vec<u32>,
    /// Per field of the callers' records, the number interned last, tried first next time.
    last: Vec<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

struct Interned {
    text: Box<str>,
    uses: u32,
}

impl Interner {
    /// The text's number, with one more use.
    pub(crate) fn intern(&mut self, text: &str) -> u32 {
        let hash = self.hasher.hash_one(text);
        if let Some(id) = self.find_hashed(hash, text) {
            self.entries[id as usize].uses += 1;
            return id;
        }
        let entries = &mut self.entries;
        let interned = Interned {
            text: text.into(),
            uses: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                entries[id as usize] = interned;
                id
            }
            None => {
                entries.push(interned);
                u32::try_from(entries.len() - 1).expect("fewer than 2^32 texts in use")
            }
        };
        let hasher = &self.hasher;
        self.index
            .insert_unique(hash, id, |&i| hasher.hash_one(&*entries[i as usize].text));
        id
    }

    /// The number of `text` if it is held, without a use.
    pub(crate) fn find(&self, text: &str) -> Option<u32> {
        self.find_hashed(self.hasher.hash_one(text), text)
    }

    fn find_hashed(&self, hash: u64, text: &str) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(hash, |&id| same_str(&entries[id as usize].text, text))
            .copied()
    }

    /// [`Interner::intern`] for one field of the caller's records (numbered by the caller:
    /// span name 0, service 1...): the text interned last for that field is tried first, so
    /// a run of records naming the same texts compares each with the previous record's
    /// instead of hashing it.
    pub(crate) fn intern_in(&mut self, text: &str, field: usize) -> u32 {
        if self.last.len() <= field {
            self.last.resize(field + 1, u32::MAX);
        }
        let hint = self.last[field];
        let id = match self.entries.get_mut(hint as usize) {
            Some(entry) if entry.uses > 0 && same_str(&entry.text, text) => {
                entry.uses += 1;
                hint
            }
            _ => self.intern(text),
        };
        self.last[field] = id;
        id
    }

    /// One use fewer of the text numbered `id`.
    pub(crate) fn release(&mut self, id: u32) {
        let entry = &mut self.entries[id as usize];
        entry.uses -= 1;
        if entry.uses > 0 {
            return;
        }
        let text = std::mem::take(&mut entry.text);
        let hash = self.hasher.hash_one(&*text);
        if let Ok(found) = self.index.find_entry(hash, |&i| i == id) {
            found.remove();
        }
        self.free.push(id);
    }

    /// Distinct texts in use.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn get(&self, id: u32) -> &str {
        &self.entries[id as usize].text
    }

    /// The most an interner holds with at most `texts` texts in use at once, each at most
    /// `text_len` bytes: its places stay at the most ever in use (entries, free numbers and
    /// the index grow by doubling).
    pub(crate) fn bytes_bound(texts: usize, text_len: usize) -> usize {
        use crate::collections::sizes::{grown, hash_table, text};
        use std::mem::size_of;
        grown(texts, size_of::<Interned>())
            + grown(texts, size_of::<u32>())
            + hash_table(texts, size_of::<u32>())
            + texts * text(text_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_shared_while_used_and_dropped_after() {
        let mut texts = Interner::default();
        let a = texts.intern("step_claim");
        assert_eq!(texts.intern("step_claim"), a);
        let b = texts.intern("rust");
        assert_ne!(a, b);
        texts.release(a);
        assert_eq!(texts.get(a), "step_claim", "one use left");
        texts.release(a);
        // The place is reused by the next new text, and the old text is not found any more.
        let c = texts.intern("python");
        assert_eq!(c, a);
        assert_eq!(texts.get(c), "python");
        let d = texts.intern("step_claim");
        assert_ne!(d, c);
        assert_eq!(texts.get(d), "step_claim");
        assert_eq!(texts.get(b), "rust");
        assert_eq!(texts.in_use(), 3);
        // The text last interned for a field is a shortcut, never a different answer.
        assert_eq!(texts.intern_in("rust", 0), b);
        assert_eq!(texts.intern_in("rust", 0), b);
        assert_eq!(texts.intern_in("step_claim", 0), d);
        assert_eq!(texts.intern_in("go", 5), texts.intern("go"));
        // A number released since is not taken: the text is interned anew.
        assert_eq!(texts.intern_in("python", 1), c);
        let before = texts.in_use();
        texts.release(c);
        texts.release(c);
        assert_eq!(texts.in_use(), before - 1);
        let e = texts.intern_in("", 1);
        assert_eq!(texts.in_use(), before);
        assert_eq!(texts.get(e), "");
        assert_eq!(texts.intern(""), e);
    }
}
