// Command etcd is upstream's etcd server, built from the
// go.etcd.io/etcd/server/v3 module pinned in this directory's go.mod, for the
// e2e test bed (test/e2e).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
