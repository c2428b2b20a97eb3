//! Text and JSON-lines rendering of attempts and findings. (To be written.)
