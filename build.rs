//! Compiles the ONNX schema (`quant/export/onnx.proto`) into Rust types when the `onnx`
//! feature is on, with protox (a protobuf compiler in Rust: no system `protoc`) and prost.

fn main() {
    #[cfg(feature = "onnx")]
    onnx_schema();
}

#[cfg(feature = "onnx")]
fn onnx_schema() {
    let proto = "quant/export/onnx.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["quant/export"])
        .unwrap_or_else(|e| panic!("cannot compile {proto}: {e}"));
    prost_build::Config::new()
        // The schema's comments are not Rust documentation (indented blocks become doctests).
        .disable_comments(["."])
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("cannot generate Rust types from {proto}: {e}"));
}
