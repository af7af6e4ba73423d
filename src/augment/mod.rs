//! Augmentations: the ops that make the views of an image, and the chain that
//! interprets a recipe's `augment` section.
