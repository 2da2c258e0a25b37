// Command bgctl is the command line for requesters, approvers and auditors.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bgctl: no commands yet")
	os.Exit(2)
}
