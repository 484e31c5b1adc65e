//! trainer's integration tests, one binary (each links candle once): kernels, model, losses, augmentation, host evaluation.
mod augment_loader;
mod augment_props;
mod eval_landmarks;
mod kernels_bn;
mod kernels_conv;
mod method_losses;
mod model_resnet;
