// Renders the Nomad job's templates with Go's text/template and stand-ins for consul-template's
// functions (nomadService, nomadVar, env, regexMatch, regexReplaceAll), as Nomad would.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"text/template"
)

type Reg struct {
	Address string
	Port    int
	Tags    []string
	AllocID string
}

func main() {
	var job map[string]interface{}
	b, _ := os.ReadFile(os.Args[1])
	if err := json.Unmarshal(b, &job); err != nil {
		panic(err)
	}
	svcs := map[string][]Reg{
		"janus-shop-stable": {
			{"10.0.0.5", 23001, []string{"janus", "pool=stable", "node=stable-0", "admin=10.0.0.5:23002"}, "a1"},
			{"10.0.0.6", 24001, []string{"janus", "pool=stable", "node=stable-1", "admin=10.0.0.6:24002"}, "a2"},
		},
		"janus-shop-debug": {
			{"10.0.0.7", 25001, []string{"janus", "pool=debug", "node=debug-0", "admin=10.0.0.7:25002"}, "a3"},
		},
	}
	funcs := template.FuncMap{
		"nomadService": func(name string) []Reg { return svcs[name] },
		"nomadVar": func(path string) map[string]string {
			if path != "nomad/jobs/janus-shop" {
				panic("unexpected variable path " + path)
			}
			return map[string]string{"router_token": "r0uter-t0ken", "node_token": "n0de-t0ken"}
		},
		"env":             func(k string) string { return map[string]string{"NOMAD_ALLOC_DIR": os.Args[2]}[k] },
		"regexMatch":      func(re, s string) bool { return regexp.MustCompile(re).MatchString(s) },
		"regexReplaceAll": func(re, repl, s string) string { return regexp.MustCompile(re).ReplaceAllString(s, repl) },
	}
	for _, g := range job["Job"].(map[string]interface{})["TaskGroups"].([]interface{}) {
		for _, t := range g.(map[string]interface{})["Tasks"].([]interface{}) {
			for _, tm := range t.(map[string]interface{})["Templates"].([]interface{}) {
				m := tm.(map[string]interface{})
				tpl := template.Must(template.New("t").Funcs(funcs).Parse(m["EmbeddedTmpl"].(string)))
				name := g.(map[string]interface{})["Name"].(string) + "_" + filepathBase(m["DestPath"].(string))
				f, _ := os.Create(os.Args[3] + "/" + name)
				if err := tpl.Execute(f, nil); err != nil {
					panic(err)
				}
				f.Close()
				fmt.Println("rendered", name)
			}
		}
	}
}

func filepathBase(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}
