//! Numeric bounds the schema states next to the fields they constrain
//! (`#[schemars(schema_with = "bounds::positive")]`), so an editor rejects
//! `temperature: 0` or `lr: -0.3` as the user types.
//!
//! schemars 0.8's `range(min, max)` only writes inclusive bounds; these functions write
//! the exclusive ones (`exclusiveMinimum`, `exclusiveMaximum`) and per-item bounds of
//! `[min, max]` pairs. `recipe validate` reports a violated bound once: when the
//! semantic checks ([`super::check`]) have a rule for the same value, their message
//! (which says why) replaces the schema's.

use schemars::r#gen::SchemaGenerator;
use schemars::schema::{
    ArrayValidation, InstanceType, NumberValidation, Schema, SchemaObject, SingleOrVec,
};

/// Lower and upper bounds of a number; `open` bounds exclude the limit itself.
#[derive(Clone, Copy, Default)]
struct Range {
    min: Option<f64>,
    open_min: bool,
    max: Option<f64>,
    open_max: bool,
}

impl Range {
    fn number(self, instance: InstanceType) -> SchemaObject {
        let mut v = NumberValidation::default();
        match (self.min, self.open_min) {
            (Some(m), true) => v.exclusive_minimum = Some(m),
            (Some(m), false) => v.minimum = Some(m),
            (None, _) => {}
        }
        match (self.max, self.open_max) {
            (Some(m), true) => v.exclusive_maximum = Some(m),
            (Some(m), false) => v.maximum = Some(m),
            (None, _) => {}
        }
        SchemaObject {
            instance_type: Some(instance.into()),
            number: Some(Box::new(v)),
            ..Default::default()
        }
    }

    fn pair(self) -> Schema {
        array(self.number(InstanceType::Number), Some(2), Some(2))
    }
}

fn array(item: SchemaObject, min_items: Option<u32>, max_items: Option<u32>) -> Schema {
    Schema::Object(SchemaObject {
        instance_type: Some(InstanceType::Array.into()),
        array: Some(Box::new(ArrayValidation {
            items: Some(SingleOrVec::Single(Box::new(Schema::Object(item)))),
            min_items,
            max_items,
            ..Default::default()
        })),
        ..Default::default()
    })
}

const GREATER_THAN_ZERO: Range = Range {
    min: Some(0.0),
    open_min: true,
    max: None,
    open_max: false,
};
const AT_LEAST_ZERO: Range = Range {
    min: Some(0.0),
    open_min: false,
    max: None,
    open_max: false,
};

/// A number greater than 0 (temperatures, learning rates, ε).
pub fn positive(_: &mut SchemaGenerator) -> Schema {
    Schema::Object(GREATER_THAN_ZERO.number(InstanceType::Number))
}

/// A number of at least 0 (weight decay, learning-rate bounds, warmup length).
pub fn non_negative(_: &mut SchemaGenerator) -> Schema {
    Schema::Object(AT_LEAST_ZERO.number(InstanceType::Number))
}

/// A number ≥ 0, or a non-empty list of them: a value or the candidates to choose from.
pub fn non_negative_or_list(_: &mut SchemaGenerator) -> Schema {
    use schemars::schema::SubschemaValidation;
    Schema::Object(SchemaObject {
        subschemas: Some(Box::new(SubschemaValidation {
            any_of: Some(vec![
                Schema::Object(AT_LEAST_ZERO.number(InstanceType::Number)),
                array(AT_LEAST_ZERO.number(InstanceType::Number), Some(1), None),
            ]),
            ..Default::default()
        })),
        ..Default::default()
    })
}

/// A number in [0, 1): momenta (a momentum of 1 never updates) and held-out fractions.
pub fn unit_open(_: &mut SchemaGenerator) -> Schema {
    Schema::Object(
        Range {
            max: Some(1.0),
            open_max: true,
            ..AT_LEAST_ZERO
        }
        .number(InstanceType::Number),
    )
}

/// A number in (0, 1]: fractions that must keep something, decay factors.
pub fn fraction(_: &mut SchemaGenerator) -> Schema {
    Schema::Object(
        Range {
            max: Some(1.0),
            ..GREATER_THAN_ZERO
        }
        .number(InstanceType::Number),
    )
}

/// A ResNet width multiplier, in (0, 16].
pub fn width(_: &mut SchemaGenerator) -> Schema {
    Schema::Object(
        Range {
            max: Some(16.0),
            ..GREATER_THAN_ZERO
        }
        .number(InstanceType::Number),
    )
}

/// `[min, max]` with both in (0, 1] (a crop's area fraction).
pub fn fraction_pair(_: &mut SchemaGenerator) -> Schema {
    Range {
        max: Some(1.0),
        ..GREATER_THAN_ZERO
    }
    .pair()
}

/// `[min, max]` with both greater than 0 (aspect ratios, blur sigmas).
pub fn positive_pair(_: &mut SchemaGenerator) -> Schema {
    GREATER_THAN_ZERO.pair()
}

/// Two numbers in [0, 1) (Adam's betas).
pub fn unit_open_pair(_: &mut SchemaGenerator) -> Schema {
    Range {
        max: Some(1.0),
        open_max: true,
        ..AT_LEAST_ZERO
    }
    .pair()
}

/// A list of numbers each greater than 0 (standard deviations).
pub fn positive_list(_: &mut SchemaGenerator) -> Schema {
    array(GREATER_THAN_ZERO.number(InstanceType::Number), None, None)
}

/// A non-empty list of whole numbers each at least 1 (channel counts of stages).
pub fn counts_non_empty(_: &mut SchemaGenerator) -> Schema {
    array(counts_item(), Some(1), None)
}

/// A list of whole numbers each at least 1 (hidden layer widths; may be empty).
pub fn counts(_: &mut SchemaGenerator) -> Schema {
    array(counts_item(), None, None)
}

fn counts_item() -> SchemaObject {
    Range {
        min: Some(1.0),
        ..Range::default()
    }
    .number(InstanceType::Integer)
}

fn one_or_list(item: SchemaObject) -> Schema {
    use schemars::schema::SubschemaValidation;
    Schema::Object(SchemaObject {
        subschemas: Some(Box::new(SubschemaValidation {
            any_of: Some(vec![
                Schema::Object(item.clone()),
                array(item, Some(1), None),
            ]),
            ..Default::default()
        })),
        ..Default::default()
    })
}

/// A number in (0, 1], or a non-empty list of them (label fractions).
pub fn fraction_or_list(_: &mut SchemaGenerator) -> Schema {
    one_or_list(
        Range {
            max: Some(1.0),
            ..GREATER_THAN_ZERO
        }
        .number(InstanceType::Number),
    )
}

/// A whole number ≥ 1, or a non-empty list of them (epochs per label fraction).
pub fn count_or_list(_: &mut SchemaGenerator) -> Schema {
    one_or_list(counts_item())
}

/// A whole number ≥ 2, or a non-empty list of them (fine-tuning's batch size per label
/// fraction: batch norm needs two images).
pub fn batch_or_list(_: &mut SchemaGenerator) -> Schema {
    one_or_list(
        Range {
            min: Some(2.0),
            ..Range::default()
        }
        .number(InstanceType::Integer),
    )
}

/// 2 to 4 angles, each 0, 90, 180 or 270 (RotNet's rotations, in degrees).
pub fn right_angles(_: &mut SchemaGenerator) -> Schema {
    let angle = SchemaObject {
        instance_type: Some(InstanceType::Integer.into()),
        enum_values: Some(vec![0.into(), 90.into(), 180.into(), 270.into()]),
        ..Default::default()
    };
    array(angle, Some(2), Some(4))
}
