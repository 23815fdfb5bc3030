//! The Merkle tree the audit log is sealed into: RFC 9162 (Certificate Transparency 2.0)
//! hashing, an append-only compact frontier, inclusion proofs built from stored subtrees,
//! and their verification.
//!
//! Hand-written rather than taken from a crate: the crates of the field (`ct-merkle`,
//! `rs_merkle`) keep the whole tree in memory, while this one lives in PostgreSQL and is
//! extended a batch at a time from the frontier alone — about 60 lines of hashing, tested
//! below against the RFC's recursive definition.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The leaf of the entry at `index` whose canonical content hashes to `content`:
/// SHA-256(0x00 ‖ index as 8 bytes big-endian ‖ content). The index is inside the leaf, so
/// moving a sealed entry to another position changes its leaf.
pub fn leaf_hash(index: u64, content: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(index.to_be_bytes());
    hasher.update(content);
    hasher.finalize().into()
}

/// An interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A stored subtree: its level (0 = a leaf) and index (its first leaf >> level).
pub type NodeKey = (u8, u64);

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The roots of the perfect subtrees a tree of some size is made of, left to right — all a
/// writer needs to append leaves and compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// Rebuilds a frontier from its stored parts; `None` if they do not fit together.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (u64::from(size.count_ones()) == nodes.len() as u64).then_some(Self { size, nodes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf and returns the subtrees it completed (level ≥ 1), to be stored.
    pub fn push(&mut self, leaf: Hash) -> Vec<(NodeKey, Hash)> {
        let mut completed = Vec::new();
        let mut hash = leaf;
        let mut level = 0_u8;
        let mut index = self.size;
        while (self.size >> level) & 1 == 1 {
            let left = self.nodes.pop().expect("one node per set bit of the size");
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            completed.push(((level, index), hash));
        }
        self.nodes.push(hash);
        self.size += 1;
        completed
    }

    /// The tree's root (RFC 9162 MTH).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// The stored subtrees whose hashes make up the subtree of leaves `[start, end)`.
fn decompose(start: u64, end: u64, out: &mut Vec<NodeKey>) {
    let width = end - start;
    if width.is_power_of_two() && start.is_multiple_of(width) {
        out.push((
            width.trailing_zeros() as u8,
            start >> width.trailing_zeros(),
        ));
    } else {
        let k = split(width);
        decompose(start, start + k, out);
        decompose(start + k, end, out);
    }
}

fn subtree(start: u64, end: u64, nodes: &HashMap<NodeKey, Hash>) -> Option<Hash> {
    let width = end - start;
    if width.is_power_of_two() && start.is_multiple_of(width) {
        nodes
            .get(&(
                width.trailing_zeros() as u8,
                start >> width.trailing_zeros(),
            ))
            .copied()
    } else {
        let k = split(width);
        Some(node_hash(
            &subtree(start, start + k, nodes)?,
            &subtree(start + k, end, nodes)?,
        ))
    }
}

/// The subtrees `[start, end)` an inclusion proof of `index` needs, in proof order.
fn path_ranges(index: u64, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
    if end - start <= 1 {
        return;
    }
    let k = split(end - start);
    if index < start + k {
        path_ranges(index, start, start + k, out);
        out.push((start + k, end));
    } else {
        path_ranges(index, start + k, end, out);
        out.push((start, start + k));
    }
}

/// Which stored subtrees the inclusion proof of leaf `index` in a tree of `size` needs.
pub fn inclusion_nodes(index: u64, size: u64) -> Vec<NodeKey> {
    let mut ranges = Vec::new();
    path_ranges(index, 0, size, &mut ranges);
    let mut keys = Vec::new();
    for (start, end) in ranges {
        decompose(start, end, &mut keys);
    }
    keys
}

/// The inclusion proof (RFC 9162 §2.1.3.1) of leaf `index` in a tree of `size`, from the
/// subtrees [`inclusion_nodes`] named; `None` if one is missing.
pub fn inclusion_proof(index: u64, size: u64, nodes: &HashMap<NodeKey, Hash>) -> Option<Vec<Hash>> {
    let mut ranges = Vec::new();
    path_ranges(index, 0, size, &mut ranges);
    ranges
        .into_iter()
        .map(|(start, end)| subtree(start, end, nodes))
        .collect()
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode, mut hash) = (index, size - 1, *leaf);
    for sibling in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && hash == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(i, &Sha256::digest(i.to_string()).into()))
            .collect()
    }

    /// RFC 9162's recursive MTH, the reference.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn stored(n: u64) -> (Frontier, HashMap<NodeKey, Hash>) {
        let mut frontier = Frontier::default();
        let mut nodes = HashMap::new();
        for (i, leaf) in leaves(n).into_iter().enumerate() {
            nodes.insert((0, i as u64), leaf);
            nodes.extend(frontier.push(leaf));
        }
        (frontier, nodes)
    }

    #[test]
    fn the_frontier_root_is_the_rfc_root_at_every_size() {
        let all = leaves(70);
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.root(), mth(&all[..=i]), "size {}", i + 1);
            let again = Frontier::from_parts(frontier.size(), frontier.nodes().to_vec());
            assert_eq!(again.as_ref(), Some(&frontier));
        }
        assert!(Frontier::from_parts(3, vec![[0; 32]]).is_none());
    }

    #[test]
    fn completed_subtrees_are_the_rfc_subtrees() {
        let all = leaves(33);
        let (_, nodes) = stored(33);
        for ((level, index), hash) in &nodes {
            let start = (*index << level) as usize;
            let end = start + (1 << level);
            assert_eq!(*hash, mth(&all[start..end]), "level {level} index {index}");
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_one_does_not() {
        for size in 1..=40 {
            let (frontier, nodes) = stored(size);
            let root = frontier.root();
            for index in 0..size {
                let keys = inclusion_nodes(index, size);
                assert!(keys.iter().all(|key| nodes.contains_key(key)));
                let proof = inclusion_proof(index, size, &nodes).unwrap();
                let leaf = nodes[&(0, index)];
                assert!(verify_inclusion(index, size, &leaf, &proof, &root));
                assert!(!verify_inclusion(index, size, &[7; 32], &proof, &root));
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(!verify_inclusion(other, size, &leaf, &proof, &root));
                }
            }
        }
    }
}
