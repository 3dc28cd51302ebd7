//! The small teacher shipped in weights/ and embedded in the binary, so `cda-engine run` works with
//! no arguments on any machine (see weights/README.md for how it was made).

pub const DEFAULT_TEACHER_NAME: &str = "weights/fashion_mnist_resnet18_w16.safetensors";
pub const DEFAULT_TEACHER_BYTES: &[u8] = include_bytes!("../weights/fashion_mnist_resnet18_w16.safetensors");

pub fn load() -> crate::Result<crate::model::ResNet> {
    let file = crate::weights::parse_tensor_file(std::path::Path::new(DEFAULT_TEACHER_NAME), DEFAULT_TEACHER_BYTES)?;
    crate::model::ResNet::from_tensors(file)
}
