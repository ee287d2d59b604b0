{{/* Names ----------------------------------------------------------------------------- */}}
{{- define "rawcap.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rawcap.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "agent") */}}
{{- define "rawcap.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "rawcap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Kubeshark key when the values file has it, else rawcap's: (dict "ks" X "own" Y) */}}
{{- define "rawcap.prefer" -}}
{{- if .ks }}{{ toYaml .ks }}{{ else if .own }}{{ toYaml .own }}{{ end -}}
{{- end -}}

{{- define "rawcap.tapPart" -}}
{{- $tap := .root.Values.tap | default dict -}}
{{- $part := get $tap .key | default dict -}}
{{- if kindIs "map" $part }}{{ with get $part .role }}{{ toYaml . }}{{ end }}{{ end -}}
{{- end -}}

{{/* Pod metadata shared by every pod: tap.labels, tap.annotations, a config checksum. */}}
{{- define "rawcap.podMeta" -}}
labels:
  {{- include "rawcap.selector" (dict "root" .root "component" .component) | nindent 2 }}
  {{- with .root.Values.tap.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
  {{- with .root.Values.tap.annotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Environment every rawcap container gets: where the values file is, Kafka secrets. */}}
{{- define "rawcap.env" -}}
- name: RAWCAP_CONFIG
  value: /etc/rawcap/values.yaml
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- with .Values.kafka.sasl }}
{{- if .existingSecret }}
{{- if .usernameKey }}
- name: RAWCAP_KAFKA_SASL_USERNAME
  valueFrom: {secretKeyRef: {name: {{ .existingSecret }}, key: {{ .usernameKey }}}}
{{- end }}
- name: RAWCAP_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .existingSecret }}, key: {{ .passwordKey }}}}
{{- end }}
{{- end }}
{{- end -}}

{{- define "rawcap.volumeMounts" -}}
- {name: config, mountPath: /etc/rawcap, readOnly: true}
{{- if .Values.kafka.tls.existingSecret }}
- {name: kafka-tls, mountPath: /etc/rawcap/kafka-tls, readOnly: true}
{{- end }}
{{- end -}}

{{- define "rawcap.volumes" -}}
- name: config
  configMap: {name: {{ include "rawcap.fullname" . }}}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret: {secretName: {{ .Values.kafka.tls.existingSecret }}}
{{- end }}
{{- end -}}

{{/* The Kafka bootstrap: kafka.bootstrap, else the Strimzi cluster's bootstrap Service. */}}
{{- define "rawcap.bootstrap" -}}
{{- if .Values.kafka.bootstrap -}}
{{- .Values.kafka.bootstrap -}}
{{- else if .Values.strimzi.enabled -}}
{{- printf "%s-kafka-bootstrap.%s.svc:9092" .Values.strimzi.clusterName .Release.Namespace -}}
{{- else -}}
{{- fail "kafka.bootstrap is required (HOST:PORT of your Kafka), or set strimzi.enabled=true" -}}
{{- end -}}
{{- end -}}

{{- define "rawcap.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{ include "rawcap.fullname" .root }}-{{ .component }}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/* A rawcap size (1Gi, 500Mi, 64k, 1.5G, 1048576) in bytes, as rawcap.config.parse_size. */}}
{{- define "rawcap.bytes" -}}
{{- $s := . | toString | trim | lower -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $s -}}
{{- $unit := trimPrefix $num $s | trim -}}
{{- $units := dict "" 1 "b" 1 "k" 1000 "m" 1000000 "g" 1000000000 "t" 1000000000000 "ki" 1024 "mi" 1048576 "gi" 1073741824 "ti" 1099511627776 "kb" 1000 "mb" 1000000 "gb" 1000000000 "tb" 1000000000000 -}}
{{- if or (not $num) (not (hasKey $units $unit)) -}}
{{- fail (printf "%q is not a size, like 1Gi, 500Mi or 1048576" (toString .)) -}}
{{- end -}}
{{- mulf (float64 $num) (get $units $unit) | int64 -}}
{{- end -}}

{{/* Container resources; a limit of "0" (Kubeshark's "unlimited") is left out. */}}
{{- define "rawcap.resources" -}}
{{- $r := deepCopy (. | default dict) -}}
{{- with $r.limits }}{{ range $k, $val := . }}{{ if eq (toString $val) "0" }}{{ $_ := unset $r.limits $k }}{{ end }}{{ end }}{{ end -}}
{{- toYaml $r -}}
{{- end -}}
