//! trainer's integration tests, one binary (each links candle once): model, losses, augmentation, host evaluation, step parity against PyTorch.
mod augment_loader;
mod augment_props;
mod eval_landmarks;
mod method_losses;
mod model_resnet;
mod step_parity;
