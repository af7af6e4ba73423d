//! The named parameter store: every trainable parameter and buffer of a model.
//!
//! dfdx's `TensorCollection` needs compile-time shapes, so the project keeps its own
//! store. Every entry is held as a flat 1-D tensor plus its logical shape; layers
//! reshape at use (`reshape_like`, free for contiguous data), while optimisers and
//! checkpoints treat all entries uniformly.
//!
//! Invariants: names are unique; `tensor.shape().0 == shape.iter().product()`;
//! buffers are never trainable.

use std::collections::HashMap;
use std::fmt;

use dfdx::prelude::*;

/// A flat parameter tensor.
pub type Flat<D> = Tensor<(usize,), f32, D>;

/// What an entry is, which decides its default weight-decay and trainability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A conv or linear weight: decayed.
    Weight,
    /// A conv or linear bias: excluded from decay by default.
    Bias,
    /// A normalisation layer's scale (`bn.weight`): excluded from decay by default.
    NormWeight,
    /// A normalisation layer's shift (`bn.bias`): excluded from decay by default.
    NormBias,
    /// A non-trainable state tensor (`running_mean`, `running_var`, `num_batches_tracked`).
    Buffer,
}

impl Role {
    /// Whether entries of this role carry gradients.
    pub fn is_trainable(self) -> bool {
        self != Role::Buffer
    }
}

/// Which parameters weight decay skips (and LARS does not adapt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecayPolicy {
    /// Skip biases of conv and linear layers.
    pub exclude_bias: bool,
    /// Skip the scale and shift of normalisation layers.
    pub exclude_norm: bool,
}

impl Default for DecayPolicy {
    fn default() -> Self {
        DecayPolicy {
            exclude_bias: true,
            exclude_norm: true,
        }
    }
}

impl DecayPolicy {
    /// Whether an entry of `role` is decayed under this policy.
    pub fn decays(&self, role: Role) -> bool {
        match role {
            Role::Weight => true,
            Role::Bias => !self.exclude_bias,
            Role::NormWeight | Role::NormBias => !self.exclude_norm,
            Role::Buffer => false,
        }
    }
}

/// Index of an entry in its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// One named parameter or buffer.
#[derive(Clone, Debug)]
pub struct Entry<D: Device<f32>> {
    /// Dotted name, torchvision style (`layer1.0.bn1.running_mean`).
    pub name: String,
    /// Logical shape (e.g. `[out, in, kh, kw]` for a conv weight).
    pub shape: Vec<usize>,
    /// The values, flattened row-major.
    pub tensor: Flat<D>,
    /// What the entry is.
    pub role: Role,
    /// Whether the optimiser updates it (false for buffers and frozen parameters).
    pub trainable: bool,
    /// Whether weight decay applies to it.
    pub decay: bool,
}

impl<D: Device<f32>> Entry<D> {
    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Errors from building or filling a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// Two entries were given the same name.
    Duplicate(String),
    /// Data length does not match the shape.
    Length {
        /// Entry name.
        name: String,
        /// Elements the shape needs.
        expected: usize,
        /// Elements supplied.
        found: usize,
    },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Duplicate(n) => write!(f, "parameter `{n}` is defined twice"),
            ParamError::Length {
                name,
                expected,
                found,
            } => write!(
                f,
                "parameter `{name}` needs {expected} values but {found} were given"
            ),
        }
    }
}

impl std::error::Error for ParamError {}

/// Named parameters and buffers of one model, in registration order.
#[derive(Clone, Debug)]
pub struct ParamStore<D: Device<f32>> {
    dev: D,
    entries: Vec<Entry<D>>,
    index: HashMap<String, usize>,
}

impl<D: Device<f32>> ParamStore<D> {
    /// An empty store whose tensors live on `dev`.
    pub fn new(dev: D) -> Self {
        ParamStore {
            dev,
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Registers an entry with the default decay policy and returns its id.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: Vec<f32>,
        role: Role,
    ) -> Result<ParamId, ParamError> {
        let name = name.into();
        if self.index.contains_key(&name) {
            return Err(ParamError::Duplicate(name));
        }
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(ParamError::Length {
                name,
                expected,
                found: data.len(),
            });
        }
        let tensor = self.dev.tensor_from_vec(data, (expected,));
        let id = ParamId(self.entries.len());
        self.index.insert(name.clone(), id.0);
        self.entries.push(Entry {
            name,
            shape: shape.to_vec(),
            tensor,
            role,
            trainable: role.is_trainable(),
            decay: DecayPolicy::default().decays(role),
        });
        Ok(id)
    }

    /// Looks an entry up by name.
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.index.get(name).map(|&i| ParamId(i))
    }

    /// The entry with id `id`.
    pub fn get(&self, id: ParamId) -> &Entry<D> {
        &self.entries[id.0]
    }

    /// The entry with id `id`, mutably.
    pub fn get_mut(&mut self, id: ParamId) -> &mut Entry<D> {
        &mut self.entries[id.0]
    }

    /// All entries in registration order.
    pub fn entries(&self) -> &[Entry<D>] {
        &self.entries
    }

    /// All entries, mutably (shape and name must not be changed).
    pub fn entries_mut(&mut self) -> &mut [Entry<D>] {
        &mut self.entries
    }

    /// Ids of all entries in registration order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + use<D> {
        (0..self.entries.len()).map(ParamId)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Scalars in trainable entries.
    pub fn num_trainable(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.trainable)
            .map(Entry::numel)
            .sum()
    }

    /// Scalars in all non-buffer entries (trainable or frozen).
    pub fn num_params(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.role != Role::Buffer)
            .map(Entry::numel)
            .sum()
    }

    /// Re-derives every entry's `decay` flag from `policy`.
    pub fn apply_decay_policy(&mut self, policy: DecayPolicy) {
        for e in &mut self.entries {
            e.decay = policy.decays(e.role);
        }
    }

    /// A copy of an entry's values.
    pub fn data(&self, id: ParamId) -> Vec<f32> {
        self.entries[id.0].tensor.as_vec()
    }

    /// Replaces an entry's values.
    pub fn set_data(&mut self, id: ParamId, data: Vec<f32>) -> Result<(), ParamError> {
        let e = &mut self.entries[id.0];
        let expected = e.numel();
        if data.len() != expected {
            return Err(ParamError::Length {
                name: e.name.clone(),
                expected,
                found: data.len(),
            });
        }
        e.tensor = self.dev.tensor_from_vec(data, (expected,));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_lookup_and_counts() {
        let mut s = ParamStore::new(Cpu::default());
        let w = s
            .add("fc.weight", &[2, 3], vec![0.5; 6], Role::Weight)
            .unwrap();
        let b = s.add("fc.bias", &[2], vec![0.0; 2], Role::Bias).unwrap();
        s.add("bn.running_mean", &[2], vec![0.0; 2], Role::Buffer)
            .unwrap();
        assert_eq!(s.id("fc.bias"), Some(b));
        assert_eq!(s.num_params(), 8);
        assert_eq!(s.num_trainable(), 8);
        assert!(s.get(w).decay && !s.get(b).decay);
        assert_eq!(
            s.add("fc.bias", &[1], vec![0.0], Role::Bias),
            Err(ParamError::Duplicate("fc.bias".into()))
        );
        assert!(matches!(
            s.set_data(w, vec![1.0; 5]),
            Err(ParamError::Length {
                expected: 6,
                found: 5,
                ..
            })
        ));
        s.apply_decay_policy(DecayPolicy {
            exclude_bias: false,
            exclude_norm: true,
        });
        assert!(s.get(b).decay);
    }
}
