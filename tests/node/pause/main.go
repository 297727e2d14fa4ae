// pause: the process of a pod's sandbox container. It holds the pod's namespaces open and waits
// until it is told to stop (SIGINT or SIGTERM), then exits 0.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
