module kubetrain.local/pause

go 1.22
