// golden: encode/decode MachineRegistration configs exactly as Elemental's operator and register client do.
//   golden encode < spec.config.json   -> the Config YAML the operator sends (yaml.v3 Marshal of elementalv1.Config)
//   golden decode < config.yaml        -> the cloud-config the register client recovers (util.MarshalCloudConfig)
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	elementalv1 "github.com/rancher/elemental-operator/api/v1beta1"
	"github.com/rancher/elemental-operator/pkg/util"
	"gopkg.in/yaml.v3"
)

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	var config elementalv1.Config
	switch os.Args[1] {
	case "encode":
		if err := json.Unmarshal(in, &config); err != nil {
			fmt.Fprintln(os.Stderr, "json:", err)
			os.Exit(1)
		}
		config.Elemental.SystemAgent = elementalv1.SystemAgent{
			URL: "https://operator.example:8443/k8s/clusters/local", Token: "TOKEN",
			SecretName: "m-1", SecretNamespace: "fleet-default",
		}
		out, err := yaml.Marshal(config)
		if err != nil {
			panic(err)
		}
		os.Stdout.Write(out)
	case "decode":
		if err := yaml.Unmarshal(in, &config); err != nil {
			fmt.Fprintln(os.Stderr, "yaml:", err)
			os.Exit(1)
		}
		out, err := util.MarshalCloudConfig(config.CloudConfig)
		if err != nil {
			panic(err)
		}
		os.Stdout.Write(out)
	}
}
