// Command connrate measures new TCP connections per second to an address
// (client mode), or serves TCP connections that it closes at once (server
// mode). Run each inside its own network namespace.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	serve := flag.String("serve", "", "listen on this address and accept forever")
	addr := flag.String("addr", "", "dial this address")
	dur := flag.Duration("d", 5*time.Second, "how long to dial")
	workers := flag.Int("c", 4, "concurrent dialers")
	flag.Parse()

	if *serve != "" {
		ln, err := net.Listen("tcp4", *serve)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				continue
			}
			c.Close()
		}
	}

	var ok, failed atomic.Int64
	deadline := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for time.Now().Before(deadline) {
				c, err := net.DialTimeout("tcp4", *addr, time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				c.Read(buf) // wait for the server's close
				c.Close()
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%.0f conn/s (%d ok, %d failed)\n", float64(ok.Load())/dur.Seconds(), ok.Load(), failed.Load())
}
