module janus/nomad-template-check

go 1.19
