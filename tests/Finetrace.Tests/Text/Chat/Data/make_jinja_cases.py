"""Regenerates jinja_cases.jsonl: templates rendered by Python Jinja2 configured as transformers' apply_chat_template
configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, tojson = json.dumps with
ensure_ascii=False, raise_exception). Run: python3 make_jinja_cases.py > jinja_cases.jsonl  (Jinja2 3.1.x)."""
import json
from datetime import datetime
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.ext import loopcontrols


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)

M1 = [{"role": "user", "content": "Hello!"}]
M2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi  "}, {"role": "assistant", "content": " Hey! "}, {"role": "user", "content": "Bye\n"}]
M3 = [{"role": "user", "content": "What's the weather?"},
      {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
      {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "assistant", "content": "21 °C."}]
M4 = [{"role": "assistant", "content": "first"}, {"role": "user", "content": "x"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

PHI3 = """{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"""

MACRO_TEMPLATE = """{%- macro render_content(content) -%}
  {%- if content is string -%}{{ content | trim }}
  {%- elif content is iterable -%}
    {%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}{%- else -%}<{{ part.type }}>{%- endif -%}{%- endfor -%}
  {%- else -%}{{ raise_exception('bad content: ' ~ content) }}
  {%- endif -%}
{%- endmacro -%}
{%- for m in messages -%}
[{{ m.role | upper }}] {{ render_content(m.content) }}
{% endfor -%}
{%- if add_generation_prompt %}[ASSISTANT]{% endif %}"""

def GEN(msgs, gen=True, **kw):
    # As transformers passes them: tools=None and documents=None first, then the caller's variables override.
    return {"messages": msgs, "add_generation_prompt": gen, "bos_token": "<s>", "eos_token": "</s>", "tools": None, "documents": None, **kw}

cases = []


def case(name, template, context):
    cases.append((name, template, context))


for i, msgs in enumerate([M1, M2, M4]):
    for gen in (True, False):
        case(f"chatml_{i}_{gen}", CHATML, GEN(msgs, gen))
        case(f"zephyr_{i}_{gen}", ZEPHYR, GEN(msgs, gen))
        case(f"mistral_{i}_{gen}", MISTRAL, GEN(msgs, gen))
        case(f"phi3_{i}_{gen}", PHI3, GEN(msgs, gen))
        case(f"llama31_{i}_{gen}", LLAMA31, GEN(msgs, gen))
        case(f"macro_{i}_{gen}", MACRO_TEMPLATE, GEN(msgs, gen))
case("llama31_tools_user", LLAMA31, GEN(M2[1:] + [], True, tools=TOOLS))
case("llama31_tools_system", LLAMA31, GEN(M2, True, tools=TOOLS, tools_in_user_message=False, date_string="01 Jan 2025"))
case("llama31_builtin", LLAMA31, GEN(M1, True, builtin_tools=["brave_search", "code_interpreter", "wolfram_alpha"]))
case("llama31_tool_call", LLAMA31, GEN(M3, False, tools=TOOLS))
case("llama31_tool_call_builtin", LLAMA31, GEN([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "brave_search", "arguments": {"query": "x y"}}}]}], False, builtin_tools=["brave_search"]))
case("llama31_tools_no_user", LLAMA31, GEN([], True, tools=TOOLS))
case("macro_parts", MACRO_TEMPLATE, GEN([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}], True))
case("macro_bad", MACRO_TEMPLATE, GEN([{"role": "user", "content": 5}], True))

# Small feature probes.
P = [
    ("ws_lstrip_comment", "a\n    {# c #}\nb", {}),
    ("ws_plus_keeps", "a\n    {%+ if true %}x{% endif %}\nb", {}),
    ("ws_plus_right", "{% if true +%}\nx{% endif %}", {}),
    ("ws_var_not_lstripped", "a\n    {{ 'x' }}\nb", {}),
    ("ws_minus_var", "a  \n {{- 'x' -}} \n b", {}),
    ("ws_trailing_newline_one", "x\n\n", {}),
    ("ws_crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc\r\n", {}),
    ("ws_block_mid_line", "ab {% if true %}x{% endif %} cd\n", {}),
    ("ws_nested", "{% for i in [1,2] %}\n  {% if i > 1 %}\n    [{{ i }}]\n  {% endif %}\n{% endfor %}\n", {}),
    ("raw_minus", "{%- raw -%}  {{ x }}  {%- endraw -%} !", {}),
    ("comment_minus", "a {#- c -#} b", {}),
    ("string_concat_literals", "{{ 'a' 'b' \"c\" }}", {}),
    ("unicode_escape", "{{ '\\u00e9\\x41\\101\\N' }}", {}),
    ("tuple_print", "{{ (1, 'a') }} {{ (1,) }} {{ () }}", {}),
    ("nested_repr", "{{ {'a': [1, {'b': none}], 'c': (true, 'it\\'s')} }}", {}),
    ("str_repr_quotes", "{{ [\"it's\", 'say \"x\"', 'both \\' \"', 'tab\\t\\u00e9\\x01'] }}", {}),
    ("float_repr", "{{ [0.1, 1e16, 1e15, 1.5e-5, 0.0001, 123456789.123, -0.0, 2/3, 10/2] }}", {}),
    ("int_float_mix", "{{ 1 + 1.0 }} {{ 3 * 0.5 }} {{ 2 ** -1 }} {{ 7 % 2.5 }} {{ -7.5 // 2 }} {{ true + 1 }}", {}),
    ("compare_mixed", "{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1,2] < [1,3] }} {{ (1,2) == [1,2] }} {{ none is none }}", {}),
    ("compare_error", "{{ 1 < 'a' }}", {}),
    ("add_error", "{{ 'a' + 1 }}", {}),
    ("undefined_add_error", "{{ missing + 1 }}", {}),
    ("undefined_call_error", "{{ missing() }}", {}),
    ("undefined_method_error", "{{ missing.strip() }}", {}),
    ("none_attr", "[{{ x.y }}]", {"x": None}),
    ("none_attr_chain_error", "{{ x.y.z }}", {"x": None}),
    ("list_elem_error", "{{ l[3].a }}", {"l": [1]}),
    ("str_attr_missing", "[{{ 'abc'.nope }}]", {}),
    ("iterate_none_error", "{% for x in none %}{% endfor %}", {}),
    ("iterate_dict", "{% for k in d %}{{ k }}{% endfor %} {% for k, v in d.items() %}{{ k }}={{ v }} {% endfor %}", {"d": {"z": 1, "a": 2}}),
    ("loop_nested_depth", "{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.depth }}{{ a }}{{ b }}{{ loop.index }} {% endfor %}{% endfor %}", {}),
    ("loop_outer", "{% for a in [1,2] %}{% set outer = loop %}{% for b in [3] %}{{ outer.index }}{{ loop.index }}{% endfor %}{% endfor %}", {}),
    ("loop_changed", "{% for x in [1,1,2,2,1] %}{% if loop.changed(x) %}{{ x }}{% endif %}{% endfor %}", {}),
    ("loop_filter_length", "{% for x in range(10) if x is odd %}{{ loop.index }}/{{ loop.length }} {% endfor %}", {}),
    ("loop_else_break", "{% for x in [1,2,3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% else %}E{% endfor %}", {}),
    ("loop_var_leak", "{% for x in [1,2] %}{% endfor %}[{{ x }}]", {}),
    ("set_in_if_top", "{% if true %}{% set y = 5 %}{% endif %}{{ y }}", {}),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}", {}),
    ("set_in_loop_ns", "{% set ns = namespace(items=[]) %}{% for x in [1,2] %}{% set ns.items = ns.items + [x] %}{% endfor %}{{ ns.items }}", {}),
    ("set_attr_non_ns_error", "{% set d = {} %}{% set d.x = 1 %}", {}),
    ("namespace_print", "{{ namespace(a=1).a }} {{ namespace({'b': 2}, c=3).b }}", {}),
    ("macro_defaults_kwargs", "{% macro f(a, b=a ~ '!', c=none) %}{{ a }}|{{ b }}|{{ c }}|{{ varargs }}|{{ kwargs }}{% endmacro %}{{ f(1) }} {{ f(1, 2, 3, 4, z=5) }}", {}),
    ("macro_missing_arg", "{% macro f(a, b) %}[{{ a }}][{{ b }}]{% endmacro %}{{ f(1) }}", {}),
    ("macro_scope", "{% set g = 'G' %}{% macro f() %}{{ g }}{% set g = 'L' %}{{ g }}{% endmacro %}{{ f() }}{{ g }}", {}),
    ("call_with_args", "{% macro list(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) list([1,2]) %}<{{ x }}>{% endcall %}", {}),
    ("with_block", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", {}),
    ("filter_chain", "{{ ' Hello World '|trim|lower|replace('o', '0')|title }}", {}),
    ("filter_default_undefined_attr", "{{ m.x|default('d') }} {{ m.get('x', 'g') }}", {"m": {}}),
    ("filter_join_attr", "{{ users|join(', ', attribute='name') }}", {"users": [{"name": "a"}, {"name": "b"}]}),
    ("filter_map_filter", "{{ ['a','b']|map('upper')|join }} {{ [1,2]|map('string')|list }}", {}),
    ("filter_select_tests", "{{ [1,2,3,4,5]|select('gt', 2)|list }} {{ [none, 1, '']|reject('none')|list }} {{ ['a', 1]|select('string')|list }}", {}),
    ("filter_selectattr_defined", "{{ msgs|selectattr('tool_calls', 'defined')|list|length }} {{ msgs|rejectattr('tool_calls')|map(attribute='role')|join(',') }}", {"msgs": [{"role": "u"}, {"role": "a", "tool_calls": [1]}]}),
    ("filter_sort_attr", "{{ d|sort(attribute='n')|map(attribute='n')|list }} {{ ['b','A','c']|sort }} {{ ['b','A','c']|sort(case_sensitive=true) }}", {"d": [{"n": 3}, {"n": 1}, {"n": 2}]}),
    ("filter_dictsort_value", "{{ {'a': 2, 'B': 1, 'c': 3}|dictsort(by='value', reverse=true) }}", {}),
    ("filter_tojson_sep_sort", "{{ d|tojson(separators=(',', ':'), sort_keys=true) }} {{ 'é'|tojson(ensure_ascii=true) }} {{ [1.0, 2.5e-7, 1e20]|tojson }}", {"d": {"b": [1, 2], "a": "x"}}),
    ("filter_tojson_undefined_error", "{{ missing|tojson }}", {}),
    ("filter_tojson_control", "{{ s|tojson }}", {"s": "a\u0001b\u007fc\u2028d</script>"}),
    ("filter_length_unicode", "{{ s|length }} {{ s[1] }} {{ s[::-1] }} {{ s|reverse }} {{ s|list|length }}", {"s": "a😀b"}),
    ("filter_first_empty", "[{{ []|first }}]", {}),
    ("filter_int_variants", "{{ '0x1A'|int(0, 16) }} {{ ' 12 '|int }} {{ '1.9'|int }} {{ none|int }} {{ true|int }} {{ 3.99|int }}", {}),
    ("filter_float_variants", "{{ '1e3'|float }} {{ 'x'|float }} {{ 5|float }}", {}),
    ("filter_round_more", "{{ 2.675|round(2) }} {{ 3.14159|round(3, 'floor') }} {{ 7|round }} {{ -2.5|round }}", {}),
    ("filter_string_list", "{{ [1,'a']|string }} {{ none|string }}", {}),
    ("filter_items_undefined", "{% for k, v in missing|items %}x{% endfor %}ok", {}),
    ("filter_batch_fill", "{{ [1,2,3]|batch(2, 0)|list }}", {}),
    ("filter_center_indent", "[{{ 'ab'|center(7) }}] [{{ 'a\n\nb'|indent(2, blank=true) }}]", {}),
    ("filter_wordcount_unicode", "{{ 'héllo wörld, 3rd'|wordcount }}", {}),
    ("filter_unknown_error", "{{ 1|nosuchfilter }}", {}),
    ("test_unknown_error", "{{ 1 is nosuchtest }}", {}),
    ("tests_more", "{{ 'abc' is lower }} {{ 'ABC' is upper }} {{ none is sameas none }} {{ 2 is in [1,2] }} {{ 5 is ge 5 }} {{ f is callable }} {{ missing is undefined }}", {"f": None}),
    ("test_iterable_undefined", "{{ missing is iterable }} {{ 5 is iterable }} {{ {} is sequence }}", {}),
    ("str_methods_more", "{{ 'a,b,c'.rsplit(',', 1) }} {{ 'a b'.partition(' ') }} {{ 'x'.zfill(3) }} {{ 'ab'.center(6, '*') }} {{ 'Ab'.swapcase() }} {{ '  '.isspace() }} {{ '12'.isdigit() }}", {}),
    ("str_split_maxsplit", "{{ 'a  b c'.split(none, 1) }} {{ 'a,b,c'.split(',', 1) }} {{ ''.split() }} {{ ''.split(',') }}", {}),
    ("str_format_spec", "{{ '{:>5}|{:<4}|{:^6}|{:.2f}|{:05d}|{!r}'.format('a', 'b', 'c', 3.14159, 42, 'q') }} {{ '{a}-{b[0]}'.format(a=1, b=[2]) }}", {}),
    ("str_percent_more", "{{ '%5.1f|%-4s|%03d|%x|%r' % (3.14159, 'ab', 7, 255, 'z') }} {{ '%(a)s' % {'a': 1} }}", {}),
    ("str_mult_list", "{{ [0] * 3 }} {{ 'ab' * 0 }}", {}),
    ("str_in_errors", "{{ 1 in 'abc' }}", {}),
    ("slice_bounds", "{{ 'abcdef'[-2:] }} {{ 'abcdef'[10:] }} {{ [1,2,3][-10:2] }} {{ [1,2,3,4,5][4:1:-2] }} {{ [1,2,3][::-2] }} {{ 'abc'[:-10:-1] }}", {}),
    ("slice_step_zero_error", "{{ [1,2][::0] }}", {}),
    ("cond_expr_chain", "{{ 'a' if false else 'b' if false else 'c' }} {{ 1 if 0 }}", {}),
    ("not_precedence", "{{ not 1 == 2 }} {{ not true and false }} {{ (not true) ~ '' }} {{ -2 ** 2 }} {{ 2 ** 3 ** 2 }}", {}),
    ("filter_precedence", "{{ -3|abs }} {{ 'a' ~ 'b'|upper }} {{ 1 + [1,2]|length }} {{ [3,4]|first * 2 }}", {}),
    ("dict_literal_keys", "{{ {1: 'a', 'x': 2, true: 'b'} }} {{ {'a': 1}['a'] }} {{ {'a': 1}.a }}", {}),
    ("dict_method_shadow", "{{ d.items is defined }} {{ d['items'] }} {{ d.keys()|list }}", {"d": {"items": "I", "k": 1}}),
    ("dict_unsafe_error", "{{ d.update({'a': 1}) }}", {"d": {}}),
    ("dict_pop_error", "{{ d.pop('a') }}", {"d": {"a": 1}}),
    ("range_errors", "{{ range(1, 10, 0)|list }}", {}),
    ("list_index_method", "{{ [1,2,3].index(2) }} {{ [1,2,2].count(2) }}", {}),
    ("bool_arith", "{{ true * 3 }} {{ false - 1 }} {{ true / 2 }}", {}),
    ("big_int_ops", "{{ 10 ** 15 }} {{ 2 ** 62 }} {{ 1_000_000 }} {{ 0x10 }} {{ 0o17 }} {{ 0b101 }}", {}),
    ("div_zero_error", "{{ 1 / 0 }}", {}),
    ("mod_zero_error", "{{ 1 % 0 }}", {}),
    ("neg_zero_float", "{{ -0.0 }} {{ 0.0 * -1 }} {{ 1e300 * 1e10 }} {{ -(1e300 * 1e10) }}", {}),
    ("syntax_error_unclosed", "{% if true %}x", {}),
    ("syntax_error_unknown_tag", "{% frobnicate %}", {}),
    ("syntax_error_endfor", "{% for x in y %}{% endif %}", {}),
    ("syntax_break_outside_loop", "{% break %}", {}),
    ("raise_in_macro", "{% macro f() %}{{ raise_exception('from macro') }}{% endmacro %}{{ f() }}", {}),
    ("raise_non_string", "{{ raise_exception(42) }}", {}),
    ("message_role_alternation", "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('alternate!') }}{% endif %}{{ m.role[0] }}{% endfor %}", {"messages": M4}),
    ("tool_call_arguments_string_vs_dict", "{% for m in messages %}{% for tc in m.tool_calls|default([]) %}{{ tc.function.arguments|tojson if tc.function.arguments is mapping else tc.function.arguments }}{% endfor %}{% endfor %}", {"messages": M3}),
    ("content_none_checks", "{% for m in messages %}{{ m.content is none }},{{ m.content is not none and m.content|length > 0 }};{% endfor %}", {"messages": M3}),
    ("reasoning_split", "{% set c = s.split('</think>')[-1].lstrip('\\n') %}{% set r = s.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}[{{ r }}][{{ c }}]", {"s": "<think>\nhmm\n\n</think>\n\nAnswer"}),
    ("messages_reverse_namespace", "{% set ns = namespace(last=-1) %}{% for m in messages[::-1] %}{% set i = (messages|length - 1) - loop.index0 %}{% if ns.last == -1 and m.role == 'user' %}{% set ns.last = i %}{% endif %}{% endfor %}{{ ns.last }}", {"messages": M2}),
    ("strftime_type", "{{ (strftime_now is defined) }}", {}),
    ("whitespace_unicode_trim", "[{{ s|trim }}] [{{ s.strip() }}]", {"s": "\u00a0\u2003 x \u3000\u0085"}),
    ("upper_lower_special", "{{ 'ǆ ǅ ß ŉ ﬁ'|upper }} {{ 'İ ΣΑΣ'|lower }} {{ 'ǆenan'|title }} {{ 'ǆenan'|capitalize }}", {}),
    ("title_method_vs_filter", "{{ \"they're bill's friends\".title() }} | {{ \"they're bill's friends\"|title }} | {{ 'hello-world foo(bar)'|title }}", {}),
]
for name, t, ctx in P:
    case(name, t, ctx)

GEMMA2 = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"""

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
for i, msgs in enumerate([M1, M2, M3, M4, M2[1:]]):
    case(f"gemma2_{i}", GEMMA2, GEN(msgs, True))
    case(f"qwen25_{i}", QWEN25, GEN(msgs, i % 2 == 0))
    case(f"qwen25_tools_{i}", QWEN25, GEN(msgs, True, tools=TOOLS))

W = [
    ("ws_start_of_template", "   {% if true %}x{% endif %}", {}),
    ("ws_after_var_same_line", "{{ 'a' }}  {% if true %}x{% endif %}", {}),
    ("ws_tabs", "\t\t{% if true %}\n\tx\n\t{% endif %}\n", {}),
    ("ws_comment_then_block", "a\n  {# c #}  {% if true %}\nb\n  {% endif %}\n", {}),
    ("ws_minus_no_newline", "{% if true -%}   x{%- endif %}|", {}),
    ("ws_minus_eats_newlines", "a\n\n  {%- if true %}b{% endif -%}\n\n  c", {}),
    ("ws_var_minus_then_block", "{{- 'a' -}}\n  {% if true %}b{% endif %}", {}),
    ("ws_raw_lstrip", "x\n    {% raw %}\n  {{ y }}\n    {% endraw %}\nz", {}),
    ("ws_set_block_trim", "{% set s %}\n  line\n{% endset %}[{{ s }}]", {}),
    ("ws_macro_body", "{% macro m() %}\n  body\n{% endmacro %}\n[{{ m() }}]", {}),
    ("ws_unicode_space_before_block", "a\n\u3000{% if true %}b{% endif %}", {}),
    ("ws_cr_only", "a\r{% if true %}\rb{% endif %}\r", {}),
    ("ws_double_trailing", "x\n\n\n", {}),
    ("ws_plus_minus_mix", "a  {%+ if true -%}  b  {%- endif +%}\n  c", {}),
]
for name, t, ctx in W:
    case(name, t, ctx)

TREE = [{"name": "a", "children": [{"name": "b", "children": []}, {"name": "c", "children": [{"name": "d", "children": []}]}]}, {"name": "e", "children": []}]
case("loop_recursive", "{% for n in tree recursive %}[{{ loop.depth }}{{ n.name }}{% if n.children %}{{ loop(n.children) }}{% endif %}]{% endfor %}", {"tree": TREE})
case("loop_recursive_depth0_filter", "{% for n in tree if n.name != 'c' recursive %}{{ loop.depth0 }}{{ n.name }}{{ loop(n.children) }}{% endfor %}", {"tree": TREE})
case("float_floordiv_fmod", "{{ 1 // 0.1 }} {{ -1 // 0.1 }} {{ 7.5 // -2 }} {{ 5.0 % -3 }} {{ -0.0 // 1 }}", {})
case("percent_list_arg", "[{{ '' % [1, 2] }}] [{{ '%s' % [1, 2] }}] [{{ 'x' % missing }}]", {})
case("falsy_map_select", "{{ none|map('upper')|list }} {{ 0|select|list }} {{ ''|rejectattr('x')|list }}", {})
case("truncate_list", "{{ [1, 2]|truncate(3) }}", {})
case("in_undefined_str_error", "{{ missing in 'abc' }}", {})
case("dictsort_non_mapping_error", "{{ [1]|dictsort }}", {})
case("mul_seq_error", "{{ 'ab' * 'c' }}", {})
case("in_non_iterable_error", "{{ 1 in 5 }}", {})
case("in_unhashable_error", "{{ [1] in {'a': 1} }}", {})
case("slice_variable_non_sequence_error", "{{ x[1:] }}", {"x": 5})
case("int_float_undefined_error", "{{ missing|int }}", {})
case("loop_call_nonrecursive_error", "{% for n in [1] %}{{ loop([]) }}{% endfor %}", {})

# Random whitespace-control templates (text with spaces, tabs, newlines between tags with -, + or no modifier).
import random
_rnd = random.Random(7)
_texts = ["", " ", "  ", "\n", "\n\n", " \n", "\n  ", "\t", "a", " a ", "\r\n", "\u00a0", "x\n  ", "\n \t"]


def _sign():
    return _rnd.choice(["", "", "-", "+"])


def _tag():
    r = _rnd.random()
    if r < 0.3:
        return "{{" + _sign().replace("+", "") + " 'v' " + _sign().replace("+", "") + "}}"
    if r < 0.45:
        return "{#" + _sign() + " c " + _sign() + "#}"
    if r < 0.6:
        return "{%" + _sign() + " set z = 1 " + _sign() + "%}"
    if r < 0.8:
        return "{%" + _sign() + " if true " + _sign() + "%}" + _body(2) + "{%" + _sign() + " endif " + _sign() + "%}"
    return "{%" + _sign() + " for i in [1, 2] " + _sign() + "%}" + _body(2) + "{%" + _sign() + " endfor " + _sign() + "%}"


def _body(d):
    out = _rnd.choice(_texts)
    for _ in range(_rnd.randint(0, 3 if d > 1 else 2)):
        out += (_tag() if d > 1 else "{{ 'w' }}") + _rnd.choice(_texts)
    return out


for i in range(150):
    case(f"ws_random_{i}", _body(3) + _rnd.choice(["", "\n", "\n\n"]), {})

# Random scoping templates: set / namespace / if / for with break and continue / with / macro / block set, nested,
# reading names before and after assignment (Jinja's compile-time symbol rules decide what is visible where).
_srnd = random.Random(11)
_names = ["x", "y", "i"]


def _val():
    return _srnd.choice(["1", "x", "y", "i", "x ~ 'a'", "ns.v", "loop.index if loop is defined else 0", "m()", "(x|string) ~ (y|string)"])


def _stmt(d):
    r = _srnd.random()
    if d > 3 or r < 0.25:
        return "{{ " + _srnd.choice(_names) + " }};"
    if r < 0.4:
        return "{% set " + _srnd.choice(_names) + " = " + _val() + " %}"
    if r < 0.5:
        return "{% set ns.v = " + _val() + " %}"
    if r < 0.6:
        return "{% if " + _srnd.choice(["true", "false", "x is defined", "i is defined"]) + " %}" + _sblock(d + 1) + "{% else %}" + _sblock(d + 1) + "{% endif %}"
    if r < 0.75:
        return "{% for i in [1, 2] %}" + _sblock(d + 1) + "{% if i == 1 %}{% " + _srnd.choice(["continue", "break", "set y = 9"]) + " %}{% endif %}{% endfor %}"
    if r < 0.85:
        return "{% with y = " + _val() + " %}" + _sblock(d + 1) + "{% endwith %}"
    if r < 0.92:
        return "{% macro m() %}" + _sblock(d + 1) + "{% endmacro %}"
    return "{% set blk %}" + _sblock(d + 1) + "{% endset %}[{{ blk }}]"


def _sblock(d):
    return "".join(_stmt(d) for _ in range(_srnd.randint(1, 3)))


for i in range(200):
    t = "{% set ns = namespace(v=0) %}{% macro m() %}M{% endmacro %}" + _sblock(0) + "|{{ x }}{{ y }}{{ i }}{{ ns.v }}"
    case(f"scope_random_{i}", t, {"x": 5})

for name, template, context in cases:
    row = {"name": name, "template": template, "context": context}
    try:
        row["rendered"] = env.from_string(template).render(**context)
    except Exception as e:  # noqa: BLE001 - the reference's error is the expected value
        row["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(row, ensure_ascii=False))
