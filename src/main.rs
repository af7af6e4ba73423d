fn main() {
    println!("recipe");
}
