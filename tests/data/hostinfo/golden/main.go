// hostinfo-golden: print the SystemDataV2 map Elemental's register client sends
// (hostinfo.ExtractLabels merged with hostinfo.ExtractLabelsLegacy, as pkg/register/register.go
// sendSystemData does), read from the tree named by GHW_CHROOT. Written for elemental-py's tests.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/rancher/elemental-operator/pkg/hostinfo"
)

func main() {
	data, err := hostinfo.Host()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostinfo:", err)
	}
	labels := hostinfo.ExtractLabels(data)
	for k, v := range hostinfo.ExtractLabelsLegacy(data) {
		labels[k] = v
	}
	out, err := json.MarshalIndent(labels, "", "  ")
	if err != nil {
		panic(err)
	}
	fmt.Println(string(out))
}
