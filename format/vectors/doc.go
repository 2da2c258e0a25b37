// Package vectors holds the tests that keep testdata/vectors, the signing
// test vectors of docs/signing.md, true to the code: every vector file is
// regenerated from the format packages and the published test keys and
// must equal the committed one byte for byte (go test ./format/vectors
// -update rewrites them), and every vector's declared verdict must be the
// verdict of the Go verifier. Clients in other languages read the same
// files (examples/node does) and must reach the same verdicts.
package vectors
