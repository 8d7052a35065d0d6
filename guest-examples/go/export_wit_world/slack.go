// `slack` in Go: one Slack message per `vm.*` call, before and after it
// runs: who did what to which VM, and how it went.
//
// Settings (the `[settings]` table of `slack.toml`): `url`, the Slack
// incoming web-hook URL.
//
// The package name and the two functions' signatures are fixed by the
// bindings that `wit-bindgen go` generates from wit/hook.wit (see build.sh).
package export_wit_world

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	types "wit_component/wasmhooks_hook_types"
	world "wit_component/wit_world"
)

type settings struct {
	URL string `json:"url"`
}

// Instance state: `setup` runs right before `handle` in every instance.
var url string

func Setup(text string) witTypes.Result[types.Subscription, string] {
	fail := witTypes.Err[types.Subscription, string]
	var s settings
	decoder := json.NewDecoder(strings.NewReader(text))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&s); err != nil {
		return fail(fmt.Sprintf("settings: %v; expected `url`", err))
	}
	if !strings.HasPrefix(s.URL, "http://") && !strings.HasPrefix(s.URL, "https://") {
		return fail("settings: `url` must be an http(s) URL, e.g. https://hooks.slack.com/services/...")
	}
	url = s.URL
	return witTypes.Ok[types.Subscription, string](types.Subscription{
		Methods: []string{"vm.*"},
		Phases:  []types.Phase{types.Phase_Pre, types.Phase_Post},
	})
}

// The fields of Xen Orchestra's event that the message uses.
type payload struct {
	UserName string          `json:"userName"`
	UserID   string          `json:"userId"`
	Params   map[string]any  `json:"params"`
	Result   any             `json:"result"`
	Error    json.RawMessage `json:"error"`
	Duration *int64          `json:"duration"`
}

func Handle(event types.Event) witTypes.Result[types.Outcome, string] {
	var p payload
	if err := json.Unmarshal([]byte(event.Payload), &p); err != nil {
		return witTypes.Err[types.Outcome, string](fmt.Sprintf("payload is not JSON: %v", err))
	}
	if event.Phase == types.Phase_Post && p.failed() {
		world.Log(types.Level_Info, event.Method+" failed; telling Slack")
	}
	message := fmt.Sprintf("%s called %s on VM %s: %s",
		p.user(), event.Method, p.vmID(event.Method), p.outcome(event.Phase))
	body, err := marshal(map[string]string{"text": escape(message)})
	if err != nil {
		return witTypes.Err[types.Outcome, string](err.Error())
	}
	return witTypes.Ok[types.Outcome, string](types.Outcome{
		Deliveries: []types.Delivery{{Url: url, Body: body}},
		Deny:       witTypes.None[string](),
	})
}

// `userName`, else `userId`, else `(unknown user)`.
func (p *payload) user() string {
	switch {
	case p.UserName != "":
		return p.UserName
	case p.UserID != "":
		return p.UserID
	}
	return "(unknown user)"
}

// `params.id`, else `params.vm`, else the `result` of `vm.create`, else `?`.
func (p *payload) vmID(method string) string {
	for _, key := range []string{"id", "vm"} {
		if v, ok := p.Params[key]; ok && v != nil {
			return text(v)
		}
	}
	if id, ok := p.Result.(string); ok && method == "vm.create" {
		return id
	}
	return "?"
}

func (p *payload) failed() bool {
	return len(p.Error) > 0 && string(p.Error) != "null"
}

// `requested`, `succeeded in N ms` or `failed: <error.message>`.
func (p *payload) outcome(phase types.Phase) string {
	if phase == types.Phase_Pre {
		return "requested"
	}
	if p.failed() {
		var e struct {
			Message *string `json:"message"`
		}
		if json.Unmarshal(p.Error, &e) == nil && e.Message != nil {
			return "failed: " + *e.Message
		}
		var any any
		_ = json.Unmarshal(p.Error, &any)
		return "failed: " + text(any)
	}
	if p.Duration != nil && *p.Duration >= 0 {
		return fmt.Sprintf("succeeded in %d ms", *p.Duration)
	}
	return "succeeded"
}

// A string as is, anything else as compact JSON.
func text(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := marshal(v)
	return string(b)
}

// JSON without Go's default escaping of <, > and & (Slack wants them as
// &lt; &gt; &amp;, which escape does) and without a trailing newline.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	encoder := json.NewEncoder(&buf)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Slack's three control characters in message text.
func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
