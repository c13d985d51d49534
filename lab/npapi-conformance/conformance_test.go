// podnet's runner of the network-policy-api conformance suite
// (sigs.k8s.io/network-policy-api/conformance), built by scripts/build-tools.sh
// (npapi-conformance) and run by `podnet-lab policy-conformance`.
//
// It differs from the suite's own TestConformance in two ways only, both because this
// lab's kernel has no SCTP: the embedded manifests are the upstream ones with the SCTP
// servers (agnhost porter, which exits when it cannot listen) removed from the base
// workload, copied in at build time; and -skip-tests names tests not to run (the
// SCTP-only ones). Every other test and check is upstream's, unchanged.
package conformance_test

import (
	"embed"
	"flag"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"

	api "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	"sigs.k8s.io/network-policy-api/conformance/utils/flags"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

//go:embed base
var manifests embed.FS

var (
	skipTests  = flag.String("skip-tests", "", "comma-separated ShortNames of tests not to run")
	skipReason = flag.String("skip-reason", "not run here", "why the -skip-tests are not run")
)

func TestConformance(t *testing.T) {
	cfg, err := config.GetConfig()
	if err != nil {
		t.Fatalf("loading the kubeconfig: %v", err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("creating the client: %v", err)
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("creating the clientset: %v", err)
	}
	if err := api.Install(c.Scheme()); err != nil {
		t.Fatalf("installing the network-policy-api scheme: %v", err)
	}
	skip := map[string]bool{}
	for _, name := range strings.Split(*skipTests, ",") {
		if name = strings.TrimSpace(name); name != "" {
			skip[name] = true
		}
	}
	s := suite.New(suite.Options{
		Client:                     c,
		ClientSet:                  clientset,
		KubeConfig:                 *cfg,
		Debug:                      *flags.ShowDebug,
		CleanupBaseResources:       *flags.CleanupBaseResources,
		SupportedFeatures:          suite.ParseSupportedFeatures(*flags.SupportedFeatures),
		ExemptFeatures:             suite.ParseSupportedFeatures(*flags.ExemptFeatures),
		EnableAllSupportedFeatures: *flags.EnableAllSupportedFeatures,
		FS:                         &manifests,
	})
	t.Logf("supported features: %v", s.SupportedFeatures.UnsortedList())
	s.Setup(t)
	for _, test := range tests.ConformanceTests {
		if skip[test.ShortName] {
			// Reported as skipped (upstream's SkipTests would report a pass).
			t.Run(test.ShortName, func(t *testing.T) { t.Skip(*skipReason) })
			continue
		}
		s.Run(t, []suite.ConformanceTest{test})
	}
}
