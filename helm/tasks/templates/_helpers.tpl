{{/*
Names. The fullname is cut to 52 characters: a StatefulSet's pods carry the
label controller-revision-hash = <name>-<10-character hash>, which must fit in
63 characters.
*/}}
{{- define "tasks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "tasks.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tasks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The headless Service that gives every pod its stable DNS name. */}}
{{- define "tasks.peersService" -}}
{{- printf "%s-peers" (include "tasks.fullname" .) }}
{{- end }}

{{- define "tasks.secretName" -}}
{{- default (printf "%s-secrets" (include "tasks.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "tasks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tasks.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tasks.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tasks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tasks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tasks.labels" -}}
helm.sh/chart: {{ include "tasks.chart" . }}
{{ include "tasks.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hanzo-tasks
{{- end }}

{{/*
DNS suffix shared by every pod: <peers service>.<namespace>.svc.<domain>.
A pod's stable name is <fullname>-<i>.<this suffix>.
*/}}
{{- define "tasks.podDomain" -}}
{{- printf "%s.%s.svc.%s" (include "tasks.peersService" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* host:port, with an IPv6 host in brackets (as tasksd writes addresses). */}}
{{- define "tasks.hostPort" -}}
{{- if contains ":" .host }}
{{- printf "[%s]:%d" .host (int .port) }}
{{- else }}
{{- printf "%s:%d" .host (int .port) }}
{{- end }}
{{- end }}

{{/* Where the ConfigMap and the Secret are mounted, and the data volume. */}}
{{- define "tasks.configDir" -}}/etc/tasks/config{{- end }}
{{- define "tasks.secretDir" -}}/etc/tasks/secrets{{- end }}
{{- define "tasks.dataDir" -}}/var/lib/tasks{{- end }}
{{- define "tasks.tlsDir" -}}/etc/tasks/tls{{- end }}

{{/*
A probe of one path: plain HTTP, HTTPS when TLS is on (the kubelet does not
verify the certificate), or, when client certificates are required (the
kubelet presents none), probe.py run in the pod with the pod's own
certificate.
*/}}
{{- define "tasks.probe" -}}
{{- $v := .ctx.Values }}
{{- if and $v.tls.enabled (eq $v.tls.clientAuth "required") -}}
exec:
  command:
    - python3
    - {{ include "tasks.configDir" .ctx }}/probe.py
    - {{ .path }}
{{- else -}}
httpGet:
  path: {{ .path }}
  port: http
  {{- if $v.tls.enabled }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}

{{/*
The node's YAML configuration: the user's `config` values plus the keys the
chart owns. Every pod gets the same file; what differs per pod (its node id and
advertised addresses) comes from the environment, which tasksd ranks above the
file. `peers` lists every pod by its stable DNS name, so the cluster can
bootstrap before any pod is ready (the peers Service publishes not-ready
addresses).
*/}}
{{- define "tasks.nodeConfig" -}}
{{- $fullname := include "tasks.fullname" . }}
{{- $domain := include "tasks.podDomain" . }}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $peers := list }}
{{- range $i := until (int .Values.replicas) }}
{{- $host := printf "%s-%d.%s" $fullname $i $domain }}
{{- $peers = append $peers (dict
      "id" (printf "%s-%d" $fullname $i)
      "peer" (include "tasks.hostPort" (dict "host" $host "port" $.Values.ports.peer))
      "http" (include "tasks.hostPort" (dict "host" $host "port" $.Values.ports.http))
      "zap" (include "tasks.hostPort" (dict "host" $host "port" $.Values.ports.zap))) }}
{{- end }}
{{- $listen := .Values.listenHost }}
{{- $_ := set $cfg "replicator" "raft" }}
{{- $_ := set $cfg "peers" $peers }}
{{- $_ := set $cfg "data_dir" (include "tasks.dataDir" .) }}
{{- $_ := set $cfg "http" (include "tasks.hostPort" (dict "host" $listen "port" .Values.ports.http)) }}
{{- $_ := set $cfg "zap" (include "tasks.hostPort" (dict "host" $listen "port" .Values.ports.zap)) }}
{{- $_ := set $cfg "peer" (include "tasks.hostPort" (dict "host" $listen "port" .Values.ports.peer)) }}
{{- $_ := set $cfg "cluster_secret_file" (printf "%s/cluster.secret" (include "tasks.secretDir" .)) }}
{{- $auth := deepCopy (get $cfg "auth" | default dict) }}
{{- $_ := set $auth "hs256_secret_file" (printf "%s/jwt-hs256.key" (include "tasks.secretDir" .)) }}
{{- $_ := set $cfg "auth" $auth }}
{{- if .Values.tls.enabled }}
{{- $dir := include "tasks.tlsDir" . }}
{{- $tls := deepCopy (get $cfg "tls" | default dict) }}
{{- $_ := set $tls "cert_file" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $tls "key_file" (printf "%s/tls.key" $dir) }}
{{- if ne .Values.tls.clientAuth "none" }}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" $dir) }}
{{- $_ := set $tls "client_auth" .Values.tls.clientAuth }}
{{- end }}
{{- if .Values.tls.peer }}
{{- $_ := set $tls "peer_cert_file" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $tls "peer_key_file" (printf "%s/tls.key" $dir) }}
{{- $_ := set $tls "peer_ca_file" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- $_ := set $cfg "tls" $tls }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
